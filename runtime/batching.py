"""Graph calls of concurrent requests on one model, run as one batch.

Requests run in worker threads. Whichever thread finds the model idle becomes the leader: it
takes the calls queued at that moment (up to ``max_rows`` sequences), runs them as one graph
call and hands each caller its rows; calls that arrive meanwhile queue for the next batch. A request
alone runs at once. Generations step again and again: when a generation that was in the last
batch has not asked for its next step yet (it is choosing its token), the leader waits for it,
at most ``max_wait`` seconds, so that the generations under way keep sharing calls instead of
drifting apart; one that misses the wait is not waited for again until it is back in a batch,
and one that ends says so (``leave``).

Two kinds of call are batched this way:

- ``StepBatcher``: next-token logits of token windows (``model.onnx``). The windows of one batch
  are padded on the right to the longest, and each row asks for the logits of its own last
  position. The graphs are causal (a position sees only the positions before it), so the padding
  changes nothing but the cost; where that cost grows with the tokens (the attention models), a
  window joins a batch only while the padding it adds costs less than a call of its own.
- ``DecodeBatcher``: steps of cached generation (``decoder.onnx``), each with its own key/value
  cache. Shorter caches are padded in front to the longest, and so are fewer new tokens (the
  prompts of prefills), the padding hidden from every query by the graph's ``attention_mask``;
  each row's ``positions`` say where its tokens really are, and each caller gets back its own
  cache without the padding. One-token steps batch with one-token steps, prefills with prefills
  while the padding a prefill adds costs less than a call of its own (``CALL_COST_TOKENS``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np

Request = TypeVar("Request")

# What one more graph call costs on the CPU, in tokens of work: there a prompt (or a window) joins a
# batch when the padding it adds is less work than running it alone (this call plus its own
# tokens). On 2 CPU threads the attention model's call costs about as much as 15-26 tokens
# (BENCHMARKS.md). A GPU's call cost is not measured, and there no limit applies: every window
# joins and so does every prompt.
CALL_COST_TOKENS = 20


def _padding_pays(
    lengths: list[int], rows: list[int], length: int, count: int, call_cost: float | None
) -> bool:
    """Whether ``count`` sequences of ``length`` tokens should join a batch of ``rows[i]``
    sequences of ``lengths[i]``, every sequence padded to the longest: when the padding they add
    is less work than a call of their own (``call_cost`` tokens plus theirs; None: always)."""
    if call_cost is None:
        return True
    before = sum(rows) * max(lengths)
    added = (sum(rows) + count) * max(*lengths, length) - before
    return added <= call_cost + count * length


# ids (B, T), positions (B, 1) -> logits (B, 1, V)
GraphCall = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass(eq=False)  # calls are told apart by identity (requests hold numpy arrays)
class _Call(Generic[Request]):
    request: Request
    rows: int
    key: object | None = None  # the generation it belongs to, if any
    done: bool = False
    result: Any = None
    error: Exception | None = None


class _Batcher(Generic[Request]):
    """The leader and its queue; subclasses say which calls go together and how they run."""

    def __init__(
        self, max_rows: int, on_batch: Callable[[int], None] | None, max_wait: float = 0.0
    ) -> None:
        """``on_batch(rows)`` hears of every graph call made (the service's metrics)."""
        if max_rows < 1:
            raise ValueError(f"max_rows must be at least 1, not {max_rows}")
        if max_wait < 0:
            raise ValueError(f"max_wait must be at least 0, not {max_wait}")
        self.max_rows = max_rows
        self.on_batch = on_batch
        self.max_wait = max_wait
        self._last: set[object] = set()  # the generations of the last batch
        self._ready = threading.Condition()
        self._queue: list[_Call[Request]] = []
        self._busy = False
        self.calls = 0  # graph calls made, for tests and metrics
        self.rows = 0  # rows computed

    def leave(self, key: object) -> None:
        """The generation ``key`` has ended: no leader waits for it any more."""
        with self._ready:
            self._last.discard(key)
            self._ready.notify_all()

    def _submit(self, request: Request, rows: int, key: object | None = None) -> Any:
        call = _Call(request, rows, key)
        deadline = None
        with self._ready:
            self._queue.append(call)
            self._ready.notify_all()  # a leader may be waiting for this call
            while True:
                while not call.done and self._busy:
                    self._ready.wait()
                if call.done:
                    if call.error is not None:
                        raise call.error
                    return call.result
                if self.max_wait and self._last - {c.key for c in self._queue}:
                    now = time.monotonic()
                    deadline = deadline or now + self.max_wait
                    if now < deadline:  # the last batch's generations are nearly back
                        self._ready.wait(deadline - now)
                        continue
                # The model is idle: this thread leads, running the queue's oldest calls (its
                # own among them unless older ones fill the batch; then it leads again).
                self._busy = True
                batch: list[_Call[Request]] = []
                try:
                    batch = self._take()
                    self._last = {c.key for c in batch if c.key is not None}
                    self._ready.release()
                    try:
                        self._run(batch)
                    finally:
                        self._ready.acquire()
                finally:  # whatever failed, the model is free again and no caller waits on it
                    for done in batch:
                        done.done = True
                    self._busy = False
                    self._ready.notify_all()

    def _fits(self, batch: list[_Call[Request]], call: _Call[Request]) -> bool:
        """Whether ``call`` may join ``batch`` (its oldest call first)."""
        return True

    def _take(self) -> list[_Call[Request]]:
        """The queue's oldest call, and the later ones that fit with it, up to max_rows rows."""
        first, *waiting = self._queue
        batch, rows, left = [first], first.rows, []
        for at, call in enumerate(waiting):
            if rows + call.rows > self.max_rows:
                left += waiting[at:]
                break
            if self._fits(batch, call):
                batch.append(call)
                rows += call.rows
            else:
                left.append(call)
        self._queue = left
        return batch

    def _run(self, batch: list[_Call[Request]]) -> None:
        try:
            results = self._compute([call.request for call in batch])
        except Exception as error:  # every caller of the batch gets it
            for call in batch:
                call.error = error
            return
        rows = sum(call.rows for call in batch)
        self.calls += 1
        self.rows += rows
        if self.on_batch is not None:
            self.on_batch(rows)
        for call, result in zip(batch, results, strict=True):
            call.result = result

    def _compute(self, requests: list[Request]) -> list[Any]:
        raise NotImplementedError


class StepBatcher(_Batcher[list[list[int]]]):
    """``batcher(windows)``: the next-token logits (B, V) of each window, batched with the
    windows of concurrent callers."""

    def __init__(
        self,
        run: GraphCall,
        max_rows: int,
        pad_id: int = 0,
        on_batch: Callable[[int], None] | None = None,
        max_wait: float = 0.0,
        call_cost: float | None = CALL_COST_TOKENS,
    ) -> None:
        """``call_cost``: a graph call's cost in tokens of work, where the work grows with the
        window's tokens (attention on the CPU), so that windows much shorter than a batch's run
        in a call of their own; None where padding is cheap (on a GPU; Bengio reads a fixed
        number of tokens out of any window)."""
        super().__init__(max_rows, on_batch, max_wait)
        self.run = run
        self.pad_id = pad_id
        self.call_cost = call_cost

    def __call__(self, windows: list[list[int]], key: object | None = None) -> np.ndarray:
        """``key``: the generation these windows belong to (see ``leave``)."""
        return self._submit(windows, len(windows), key)

    def _fits(self, batch: list[_Call[list[list[int]]]], call: _Call[list[list[int]]]) -> bool:
        longest = [max(len(w) for w in c.request) for c in batch]
        length = max(len(w) for w in call.request)
        return _padding_pays(longest, [c.rows for c in batch], length, call.rows, self.call_cost)

    def _compute(self, requests: list[list[list[int]]]) -> list[np.ndarray]:
        windows = [w for request in requests for w in request]
        length = max(len(w) for w in windows)
        ids = np.full((len(windows), length), self.pad_id, dtype=np.int64)
        for row, window in enumerate(windows):
            ids[row, : len(window)] = window
        positions = np.asarray([[len(w) - 1] for w in windows], dtype=np.int64)
        logits = self.run(ids, positions)[:, 0]
        return _split(logits, [len(request) for request in requests])


# ids (B, T), keys, values (L, B, H, P, Dh) -> logits (B, V), keys, values (L, B, H, P+T, Dh)
Cache = tuple[np.ndarray, np.ndarray]
DecodeStep = tuple[np.ndarray, np.ndarray, np.ndarray]


def decode_feed(
    ids: np.ndarray,
    keys: np.ndarray,
    values: np.ndarray,
    positions: np.ndarray | None = None,
    mask: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """The inputs of ``decoder.onnx``; without positions and mask, rows of one length whose
    new tokens follow their cache."""
    rows, steps, past = ids.shape[0], ids.shape[1], keys.shape[3]
    if positions is None:
        positions = np.broadcast_to(np.arange(past, past + steps, dtype=np.int64), (rows, steps))
    if mask is None:
        mask = np.ones((rows, past + steps), dtype=np.int64)
    return {
        "input_ids": np.ascontiguousarray(ids, dtype=np.int64),
        "positions": np.ascontiguousarray(positions, dtype=np.int64),
        "past_keys": np.ascontiguousarray(keys),
        "past_values": np.ascontiguousarray(values),
        "attention_mask": mask,
    }


class DecodeBatcher(_Batcher[DecodeStep]):
    """``batcher(ids, keys, values)``: one step of cached generation for the caller's rows
    (ids (B, T) after caches (L, B, H, P, Dh)) -> (logits (B, V), its caches (L, B, H, P+T,
    Dh)), batched with concurrent callers' steps of one token (T = 1), or their prompts (T > 1)
    while the padding pays (``call_cost``, as for ``StepBatcher``)."""

    def __init__(
        self,
        session,
        max_rows: int,
        on_batch: Callable[[int], None] | None = None,
        max_wait: float = 0.0,
        call_cost: float | None = CALL_COST_TOKENS,
    ) -> None:
        super().__init__(max_rows, on_batch, max_wait)
        self.session = session
        self.call_cost = call_cost

    def __call__(
        self, ids: np.ndarray, keys: np.ndarray, values: np.ndarray, key: object | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``key``: the generation this step belongs to (see ``leave``)."""
        return self._submit((ids, keys, values), ids.shape[0], key)

    def _fits(self, batch: list[_Call[DecodeStep]], call: _Call[DecodeStep]) -> bool:
        steps = [c.request[0].shape[1] for c in batch]
        new = call.request[0].shape[1]
        if new == 1 or steps[0] == 1:
            # Padding a one-token step to a prompt's length would cost the prompt's work for
            # every row; steps batch with steps only.
            return new == steps[0]
        return _padding_pays(steps, [c.rows for c in batch], new, call.rows, self.call_cost)

    def _compute(self, requests: list[DecodeStep]) -> list[tuple[np.ndarray, ...]]:
        if len(requests) == 1:
            return [tuple(self.session.run(None, decode_feed(*requests[0])))]
        layers, _, heads, _, head_dim = requests[0][1].shape
        lengths = [keys.shape[3] for _, keys, _ in requests]
        news = [ids.shape[1] for ids, _, _ in requests]
        counts = [ids.shape[0] for ids, _, _ in requests]
        past, steps, total = max(lengths), max(news), sum(counts)
        # Each row: [padding, its cache | padding, its new tokens]; the mask hides the padding.
        keys = np.zeros((layers, total, heads, past, head_dim), dtype=np.float32)
        values = np.zeros_like(keys)
        ids = np.zeros((total, steps), dtype=np.int64)
        mask = np.zeros((total, past + steps), dtype=np.int64)
        positions = np.zeros((total, steps), dtype=np.int64)
        row = 0
        for (new_ids, k, v), length, new in zip(requests, lengths, news, strict=True):
            count = new_ids.shape[0]
            rows, pad, pad_new = slice(row, row + count), past - length, steps - new
            keys[:, rows, :, pad:] = k
            values[:, rows, :, pad:] = v
            ids[rows, pad_new:] = new_ids
            mask[rows, pad:past] = 1
            mask[rows, past + pad_new :] = 1
            positions[rows, pad_new:] = np.arange(length, length + new)
            row += count
        logits, present_keys, present_values = self.session.run(
            None, decode_feed(ids, keys, values, positions, mask)
        )
        # Each caller gets copies of its rows: a view would keep the whole batch's cache alive for
        # as long as any of its generations waits (a slow streaming client), not just its own.
        results, row = [], 0
        for length, new, count in zip(lengths, news, counts, strict=True):
            rows = slice(row, row + count)
            columns = (past - length, past, past + steps - new)
            results.append(
                (
                    logits[rows],
                    _own_columns(present_keys[:, rows], *columns),
                    _own_columns(present_values[:, rows], *columns),
                )
            )
            row += count
        return results


def _own_columns(cache: np.ndarray, start: int, past: int, new_start: int) -> np.ndarray:
    """A copy of some rows' caches (L, B, H, P+T, Dh) without the padding: columns ``start`` to
    ``past`` (their cache) and from ``new_start`` on (their new tokens)."""
    if new_start == past:
        return cache[:, :, :, start:].copy()
    return np.concatenate([cache[:, :, :, start:past], cache[:, :, :, new_start:]], axis=3)


def _split(array: np.ndarray, counts: list[int]) -> list[np.ndarray]:
    """``array``'s rows, ``counts[i]`` for the i-th caller."""
    return np.split(array, np.cumsum(counts)[:-1])
