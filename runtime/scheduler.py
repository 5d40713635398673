"""Continuous batching on cache slots: one thread steps every running sequence at once.

Request threads hand their sequences to the model's ``SlotScheduler`` and read what comes
back; the scheduler's own thread loops: one graph call adds the last chosen token of every
sequence that has one (``SlotCache.step`` over their slots), each sequence's callback chooses
its next token from its row of logits, and the prompts that came in meanwhile are read between
those steps, in chunks, up to a budget of tokens per round (``token_budget``: the step's rows
and the prompt tokens together, at least ``min_prefill`` prompt tokens), so that a long prompt
does not stall the sequences already generating and many new ones all start soon. A sequence
joins the step after its prompt is read and leaves the moment its callback says it is done,
its slot free for the next. No thread waits for another to come back with its token.

A sequence longer than the context starts again from its last 3/4 (``CachedContext``'s rule,
so the tokens are the same as through decoder.onnx).

With a ``Drafter`` (runtime/speculation.py), a round in which a single greedy sequence decodes
checks the tokens drafted for it in the same call that adds its next one.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from runtime.deadline import Deadline
from runtime.sampling import logsumexp
from runtime.slots import SlotCache
from runtime.speculation import Drafter

# (logits of the sequence's next token, their logsumexp) -> (events for its request, whether it
# goes on); the callback appends the token it chose to the sequence's ids.
OnLogits = Callable[[np.ndarray, float], tuple[list, bool]]
# How often a request waiting for its events checks its deadline (time limit, hang-up).
POLL_S = 0.05
_LEFT = object()  # a sequence of the request has left (its slot is free)


@dataclass(eq=False)
class Sequence:
    """A sequence on a slot: all its tokens so far (the callback appends each new one)."""

    ids: list[int]
    on_logits: OnLogits
    slot: int = -1
    feed: list[int] = field(default_factory=list)  # tokens to add at its next call
    cached: int = 0  # tokens its slot holds
    group: Group | None = None
    greedy: bool = False  # its tokens are its model's likeliest: a drafter may draft for it


@dataclass(eq=False)
class Group:
    """The sequences of one request (its choices), ended together when it fails or leaves."""

    sequences: list[Sequence]
    events: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    ended: bool = False


class SlotScheduler:
    """The decode loop of one model on its cache slots (see the module's docstring)."""

    def __init__(
        self,
        cache: SlotCache,
        max_rows: int,
        on_batch: Callable[[int], None] | None = None,
        token_budget: int = 256,
        min_prefill: int = 32,
        drafter: Drafter | None = None,
    ) -> None:
        """``max_rows``: the most sequences one step computes for; ``token_budget``: the
        tokens of a round, the step's rows and prompt tokens together; ``min_prefill``: the
        prompt tokens a round reads even when the step takes the whole budget; ``drafter``:
        drafts for a lone greedy sequence (``cache``'s calls then return the logits of up to
        ``drafter.tokens + 1`` tokens)."""
        self.cache = cache
        self.drafter = drafter
        self.context = cache.context
        self.refill = max(1, self.context * 3 // 4)
        self.max_rows = max_rows
        self.on_batch = on_batch
        self.token_budget = token_budget
        self.min_prefill = min_prefill
        self.calls = 0  # decode steps run, and the rows they computed (for tests and metrics)
        self.rows = 0
        self._running: list[Sequence] = []
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def generate(self, sequences: list[tuple], deadline: Deadline | None = None) -> Iterator | None:
        """The events of each (ids, callback[, greedy]) sequence's callbacks, in order, until
        every sequence has left; None when there are not that many free slots. A failed graph
        call or callback is raised here; the deadline is checked while waiting; closing the
        iterator ends the sequences. ``greedy``: the callback chooses the likeliest token (a
        drafter may draft for the sequence)."""
        group = self.submit(sequences)
        return None if group is None else self._follow(group, len(sequences), deadline)

    def submit(self, sequences: list[tuple]) -> Group | None:
        """The sequences added to the loop (each on a slot of its own), or None."""
        slots = self.cache.acquire(len(sequences))
        if slots is None:
            return None
        group = Group([])
        for slot, (ids, on_logits, *greedy) in zip(slots, sequences, strict=True):
            window = list(ids[-self.context :])
            sequence = Sequence(ids, on_logits, slot, window, 0, group, *greedy)
            group.sequences.append(sequence)
        with self._lock:
            self._running.extend(group.sequences)
            if self._thread is None:  # the loop ends when idle: nothing holds the model after
                self._thread = threading.Thread(target=self._loop, name="slot-scheduler")
                self._thread.daemon = True
                self._thread.start()
        return group

    def _follow(self, group: Group, count: int, deadline: Deadline | None) -> Iterator:
        try:
            while count:
                if deadline is not None:
                    deadline.check()
                try:
                    item = group.events.get(timeout=POLL_S)
                except queue.Empty:
                    continue
                if item is _LEFT:
                    count -= 1
                elif isinstance(item, BaseException):
                    raise item
                else:
                    yield item
        finally:  # ended, failed or abandoned (a client hung up): the slots go back
            self.cancel(group)

    def cancel(self, group: Group) -> None:
        """The request ended (done, failed or gone): its sequences leave, their slots free."""
        group.ended = True
        self._free(group.sequences)

    def _free(self, sequences: list[Sequence]) -> None:
        """Each slot goes back once, whoever ends its sequence first (the loop or the request)."""
        leaving = set(map(id, sequences))
        with self._lock:
            slots = [s.slot for s in sequences if s.slot >= 0]
            for s in sequences:
                s.slot, s.feed = -1, []
            self._running = [s for s in self._running if id(s) not in leaving]
        self.cache.release(slots)

    # The loop ---------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._lock:  # what to run, read while no request can end a sequence
                if not self._running:
                    self._thread = None
                    return
                ready = [s for s in self._running if len(s.feed) == 1 and s.cached]
                decoding = ready[: self.max_rows]
                stepping = set(map(id, decoding))
                if len(ready) > len(decoding):  # more than a step takes: the others go first
                    self._running.sort(key=lambda s: id(s) in stepping)
                step = [(s, s.slot, s.feed[0]) for s in decoding]
                waiting = [s for s in self._running if s.feed and id(s) not in stepping]
                budget = max(self.min_prefill, self.token_budget - len(step))
                prefills = self._prefill_plans(waiting, budget)
            if len(step) == 1 and self._draftable(step[0][0]):
                self._speculate(*step[0])
            elif step:
                self._decode(step)
            for plan in prefills:
                self._prefill(*plan)

    @staticmethod
    def _prefill_plans(waiting: list[Sequence], budget: int) -> list[tuple]:
        """The next chunks of the waiting prompts, first come first, within ``budget``
        tokens: for each request, every sequence of it that reads that prompt (one call where
        their slots are contiguous)."""
        plans, planned = [], set()
        for first in waiting:
            if budget <= 0:
                break
            if id(first.group) in planned:
                continue
            planned.add(id(first.group))
            sequences = [s for s in waiting if s.group is first.group and s.feed == first.feed]
            chunk = first.feed[: max(1, budget // len(sequences))]
            budget -= len(chunk) * len(sequences)
            last = len(chunk) == len(first.feed)
            plans.append((sequences, [s.slot for s in sequences], chunk, first.cached == 0, last))
        return plans

    def _decode(self, step: list[tuple[Sequence, int, int]]) -> None:
        sequences = [s for s, _, _ in step]
        try:
            logits = self.cache.step([slot for _, slot, _ in step], [[t] for _, _, t in step])
            lse = logsumexp(logits)
        except Exception as error:  # the graph or its output failed: every request in it hears
            for group in {id(s.group): s.group for s in sequences}.values():
                self._fail(group, error)
            return
        self.calls += 1
        self.rows += len(step)
        if self.on_batch is not None:
            self.on_batch(len(step))
        for s, row, row_lse in zip(sequences, logits, lse, strict=True):
            s.cached += 1
            self._advance(s, row, float(row_lse))

    def _draftable(self, s: Sequence) -> bool:
        """Whether a drafter can draft for ``s`` now: it is greedy, and its slot has room for
        the drafted tokens."""
        drafter = self.drafter
        return drafter is not None and s.greedy and s.cached + 1 + drafter.tokens <= self.context

    def _speculate(self, s: Sequence, slot: int, token: int) -> None:
        """One round for the lone decoding sequence ``s`` (on ``slot``, adding ``token``, both
        read under the lock: its request may end it meanwhile): the drafter drafts from what
        its slot holds, one call adds the token and the drafted ones, and ``s`` chooses from
        each position's logits in turn while its choice is the drafted token (the first
        choice that is not, or the one after the last drafted token, is its own and ends the
        round). Without a draft, the usual step."""
        try:
            drafted = self.drafter.draft(s.ids[-(s.cached + 1) :])
            if not drafted:
                self._decode([(s, slot, token)])
                return
            logits = self.cache.verify(slot, [token, *drafted])
        except Exception as error:
            self._fail(s.group, error)
            return
        self.calls += 1
        self.rows += 1
        if self.on_batch is not None:
            self.on_batch(1)
        accepted = 0
        for row in logits:
            try:  # row by row: the rows after the first rejected token are never read
                lse = float(logsumexp(row))
            except Exception as error:
                self._fail(s.group, error)
                return
            s.cached += 1
            self._advance(s, row, lse)
            if s.slot < 0 or s.group.ended or not s.cached:  # done, gone, or starting again
                break
            if accepted == len(drafted) or s.ids[-1] != drafted[accepted]:
                self.cache.lengths[slot] = s.cached  # the rejected drafted tokens drop out
                break
            accepted += 1
        self.drafter.checked(len(drafted), accepted)

    def _prefill(
        self,
        sequences: list[Sequence],
        slots: list[int],
        chunk: list[int],
        restart: bool,
        last: bool,
    ) -> None:
        if restart:
            self.cache.lengths[slots] = 0
        try:
            logits = self.cache.prefill(slots, [chunk] * len(sequences))
            lse = logsumexp(logits) if last else None
        except Exception as error:
            self._fail(sequences[0].group, error)
            return
        for i, s in enumerate(sequences):
            if s.slot < 0:
                continue
            s.feed = s.feed[len(chunk) :]
            s.cached += len(chunk)
            if last:
                self._advance(s, logits[i], float(lse[i]))

    def _advance(self, s: Sequence, logits: np.ndarray, lse: float) -> None:
        if s.group.ended or s.slot < 0:  # left while its row was computed
            return
        try:
            events, going = s.on_logits(logits, lse)
        except Exception as error:
            self._fail(s.group, error)
            return
        if not going:
            self._free([s])  # before its request hears that it ended
        for event in events:
            s.group.events.put(event)
        if not going:
            s.group.events.put(_LEFT)
        elif s.cached + 1 > self.context:  # full: start again from the last 3/4
            s.feed, s.cached = s.ids[-self.refill :], 0
        else:
            s.feed = s.ids[-1:]

    def _fail(self, group: Group, error: BaseException) -> None:
        if not group.ended:
            self.cancel(group)
            group.events.put(error)
