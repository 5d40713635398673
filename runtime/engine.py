"""Inference on one loaded model: next-token distributions, generation, scoring, attention.

Blocking numpy and ONNX Runtime code: a server runs it in worker threads, off its event loop.
Every prompt starts after an end-of-text token, as every document did in training.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator

import numpy as np
import onnxruntime as ort

from runtime.batching import CALL_COST_TOKENS, DecodeBatcher, StepBatcher
from runtime.deadline import Deadline
from runtime.detokenize import IncrementalText
from runtime.errors import TokenNotFound
from runtime.kv_cache import CachedContext, uses_kv_cache
from runtime.loader import CUDA, LoadedModel
from runtime.maps import attention_maps
from runtime.results import (
    AttentionMaps,
    Candidate,
    Generation,
    GenerationRequest,
    NextToken,
    Score,
    Step,
    TokenScore,
)
from runtime.sampling import (
    choose,
    entropy_bits,
    first_stop,
    likeliest,
    log_softmax,
    logsumexp,
)
from runtime.scheduler import OnLogits, SlotScheduler
from runtime.speculation import Drafter
from runtime.windows import scoring_window, stride_of, window_plan

END_OF_TEXT = "<|endoftext|>"


# Logits elements (float32) from which a graph call is large (4 MiB), and how many large calls
# of one model run at once.
LARGE_CALL_ELEMENTS = 1 << 20
LARGE_CALLS = 2
SHRINK_ARENA = ort.RunOptions()
SHRINK_ARENA.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")


class _Choice:
    """One sequence being generated: its tokens, text, random generator and result."""

    def __init__(self, ids: list[int], result: Generation, seed: int | None) -> None:
        self.ids = ids
        self.result = result
        self.rng = np.random.default_rng(seed)
        self.generated: list[int] = []
        self.text = ""
        self.texts = IncrementalText()


class Engine:
    """The computations the endpoints need, on one model."""

    def __init__(
        self,
        model: LoadedModel,
        max_batch_rows: int = 1,
        on_batch: Callable[[int], None] | None = None,
        batch_wait: float = 0.0,
        slot_rows: int | None = None,
        on_draft: Callable[[int, int], None] | None = None,
    ) -> None:
        """``max_batch_rows`` > 1: next-token calls and cached generation steps of concurrent
        callers (threads) are batched, up to that many sequences a graph call
        (runtime.batching), each reported to ``on_batch``; a batch waits up to ``batch_wait``
        seconds for the generations of the batch before it. ``slot_rows``: the most sequences
        a step on cache slots computes for (default: ``max_batch_rows``); ``on_draft``: told
        the tokens drafted and accepted of each checked draft (runtime.speculation)."""
        if not model.ready:
            raise ValueError(f"model {model.name} is not loaded: {model.error}")
        self.model = model
        self.name = model.name
        self.card = model.card
        self.tokenizer = model.tokenizer
        self.context = int(self.card["context"])
        self.vocab_size = int(self.card["config"]["vocab_size"])
        self.score_window = scoring_window(self.card)
        self.eot = eot = self.tokenizer.token_to_id(END_OF_TEXT)
        if eot is None:
            raise ValueError(f"the tokenizer of {self.name} has no {END_OF_TEXT} token")
        # On the CPU an attention model's work grows with the tokens a call pads to: short
        # sequences stay out of long batches. On CUDA (not measured) and for Bengio, any join.
        on_cpu = model.provider != CUDA
        self.shrinks = on_cpu  # a CUDA session has no arena for "cpu:0" to shrink
        self.large_calls = threading.BoundedSemaphore(LARGE_CALLS)
        call_cost = CALL_COST_TOKENS if on_cpu else None
        self.batcher = (
            StepBatcher(
                self._logits,
                max_batch_rows,
                eot,
                on_batch,
                batch_wait,
                call_cost if self.card.get("has_attention") else None,
            )
            if max_batch_rows > 1
            else None
        )
        decoder = model.decoder_session
        self.decode_batcher = (
            DecodeBatcher(decoder, max_batch_rows, on_batch, batch_wait, call_cost)
            if max_batch_rows > 1
            and decoder is not None
            and "attention_mask" in {i.name for i in decoder.get_inputs()}
            else None
        )
        # Generation on cache slots (runtime.scheduler) where the loader opened their graph.
        self.scheduler = (
            SlotScheduler(
                model.slot_cache(),
                max(1, min(max_batch_rows if slot_rows is None else slot_rows, model.kv_slots)),
                on_batch,
                drafter=Drafter(model.draft_tokens, on_draft) if model.draft_tokens else None,
            )
            if model.slot_session is not None
            else None
        )

    # Tokens -----------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def prompt_ids(self, prompt: str | list[int]) -> list[int]:
        """The tokens the model reads: an end-of-text token, then the prompt (text, or token
        ids as they are)."""
        return [self.eot, *(self.encode(prompt) if isinstance(prompt, str) else prompt)]

    def token_texts(self, ids: list[int]) -> list[str]:
        return [self.tokenizer.decode([i], skip_special_tokens=False) for i in ids]

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    # Graph calls ------------------------------------------------------------------------
    def _logits(self, ids: np.ndarray, positions: np.ndarray) -> np.ndarray:
        if positions.size * self.vocab_size < LARGE_CALL_ELEMENTS:
            return self.model.logits(ids, positions)
        # A call whose logits alone take megabytes (scoring windows, an echoed prompt): ONNX
        # Runtime's arena keeps, for good, the most memory that such calls ever took at once,
        # so at most LARGE_CALLS of them run at a time on a model (on two cores more would
        # only share them), and on the CPU each gives back what it freed when it ends.
        options = SHRINK_ARENA if self.shrinks else None
        with self.large_calls:
            return self.model.logits(ids, positions, options)

    def next_logits(self, ids: list[int]) -> np.ndarray:
        """Logits (V,) of the token after ``ids``; only the last position reaches the output
        layer, and the model sees at most its context."""
        return self.next_logits_rows([ids])[0]

    def next_logits_rows(self, rows: list[list[int]], key: object | None = None) -> np.ndarray:
        """Logits (B, V) after each of ``rows`` (sequences of one length), as one batch, with
        other callers' rows where batching is on (``key``: the generation asking)."""
        if self.batcher is not None:
            return self.batcher([row[-self.context :] for row in rows], key)
        window = np.asarray([row[-self.context :] for row in rows], dtype=np.int64)
        positions = np.full((len(rows), 1), window.shape[1] - 1)
        return self._logits(window, positions)[:, 0]

    # Endpoints --------------------------------------------------------------------------
    def next_token(self, prompt: str, top_k: int) -> NextToken:
        ids = self.prompt_ids(prompt)
        seen = ids[-self.context :]
        logprobs = log_softmax(self.next_logits(ids))
        top = likeliest(logprobs[None], top_k)[0]
        return NextToken(
            tokens=self.token_texts(seen),
            token_ids=seen,
            truncated=len(ids) > self.context,
            top=[Candidate(i, self.decode([i]), math.exp(lp), lp) for i, lp in top],
            entropy_bits=entropy_bits(logprobs),
        )

    def check_token_ids(self, ids, field: str) -> None:
        """TokenNotFound for an id outside this model's vocabulary."""
        for token in map(int, ids):
            if not 0 <= token < self.vocab_size:
                raise TokenNotFound(
                    f"token id {token} is not in the vocabulary of {self.name}: its ids are "
                    f"0..{self.vocab_size - 1}",
                    field,
                )

    def generate(
        self, request: GenerationRequest, deadline: Deadline | None = None
    ) -> Iterator[Step | Generation]:
        """Yields each new token as it comes, then the finished Generation."""
        for _, item in self.generate_many(request, [request.seed], deadline):
            yield item

    def generate_many(
        self,
        request: GenerationRequest,
        seeds: list[int | None],
        deadline: Deadline | None = None,
    ) -> Iterator[tuple[int, Step | Generation]]:
        """One completion of the request's prompt per seed (its own ``seed`` aside), computed
        as one batch: yields (choice, Step) for each new token and (choice, Generation) when a
        choice ends. Each choice draws from its own seed, so it is the completion ``generate``
        makes with that seed."""
        self.check_token_ids((token for token, _ in request.sampling.logit_bias), "logit_bias")
        ids = self.prompt_ids(request.prompt)
        choices = [
            _Choice(
                list(ids),
                Generation(
                    prompt_ids=ids[-self.context :], prompt_truncated=len(ids) > self.context
                ),
                seed,
            )
            for seed in seeds
        ]
        scheduled = (
            self._scheduled(choices, request, deadline)
            if self.scheduler is not None and request.max_new_tokens > 0
            else None
        )
        if scheduled is not None:
            yield from scheduled
            return
        key = object()  # this generation, to the batchers
        cache: CachedContext | None = None
        batcher = self.batcher
        if uses_kv_cache(self.model):  # no slots, or none free: decoder.onnx
            cache = CachedContext(
                self.model.decoder_session, self.context, self.decode_batcher, key
            )
            batcher = self.decode_batcher
        steps = self._steps(choices, cache, key, request, deadline)
        finished = 0
        try:
            for c, item in steps:
                if isinstance(item, Generation):
                    finished += 1
                    if finished == len(choices) and batcher is not None:
                        batcher.leave(key)  # before the caller hears of it
                yield c, item
        finally:  # ended, failed or abandoned (a client hung up): no batch waits for it
            if batcher is not None:
                batcher.leave(key)

    def _scheduled(
        self,
        choices: list[_Choice],
        request: GenerationRequest,
        deadline: Deadline | None,
    ) -> Iterator[tuple[int, Step | Generation]] | None:
        """generate_many's events with the choices stepped by the slot scheduler; None
        without free slots."""

        def advance(c: int) -> OnLogits:
            choice, taken = choices[c], [0]

            def on_logits(logits: np.ndarray, lse: float) -> tuple[list, bool]:
                step = self._advance(choice, logits, request, lse)
                taken[0] += 1
                events = [] if step is None else [(c, step)]
                if choice.result.finish_reason != "length" or taken[0] == request.max_new_tokens:
                    return [*events, (c, self._finish(choice))], False
                return events, True

            return on_logits

        greedy = request.sampling.temperature == 0.0
        sequences = [(c.ids, advance(i), greedy) for i, c in enumerate(choices)]
        return self.scheduler.generate(sequences, deadline)

    def _steps(
        self,
        choices: list[_Choice],
        cache: CachedContext | None,
        key: object,
        request: GenerationRequest,
        deadline: Deadline | None,
    ) -> Iterator[tuple[int, Step | Generation]]:
        active = list(range(len(choices)))
        for _ in range(request.max_new_tokens):
            if deadline is not None:
                deadline.check()
            rows = [choices[c].ids for c in active]
            logits = (
                self.next_logits_rows(rows, key) if cache is None else cache.next_logits_rows(rows)
            )
            still = []
            for row, c in enumerate(active):
                step = self._advance(choices[c], logits[row], request)
                if step is not None:
                    yield c, step
                if choices[c].result.finish_reason == "length":
                    still.append(row)
                else:
                    yield c, self._finish(choices[c])
            if len(still) < len(active):
                active = [active[row] for row in still]
                if cache is not None and active:
                    cache.keep(still)
            if not active:
                return
        for c in active:
            yield c, self._finish(choices[c])

    def _advance(
        self,
        choice: _Choice,
        logits: np.ndarray,
        request: GenerationRequest,
        lse: float | None = None,
    ) -> Step | None:
        """Choose one token for ``choice``; the Step to stream, if any. A finished choice gets
        its finish_reason ("end_of_text", "stop"). ``lse``: the logits' logsumexp, where the
        caller computed it (for a whole batch at once)."""
        token = choose(
            logits, request.sampling, choice.ids[-self.context :], choice.rng, choice.generated
        )
        lse = float(logsumexp(logits)) if lse is None else lse
        logprob = float(logits[token]) - lse
        if token == self.eot:
            choice.result.finish_reason = "end_of_text"
            choice.result.end_logprob = logprob
            return None
        top = (
            likeliest(logits[None].astype(np.float64) - lse, request.logprobs)[0]
            if request.logprobs
            else []
        )
        choice.ids.append(token)
        choice.generated.append(token)
        full = choice.texts.text(choice.generated, self.decode)
        piece = full[len(choice.text) :] if full.startswith(choice.text) else ""
        step = Step(token, piece, logprob, top)
        choice.result.steps.append(step)
        cut = first_stop(full, request.stop)
        if cut >= 0:
            choice.text = full[:cut]
            choice.result.finish_reason = "stop"
            return None
        choice.text = full
        return step

    @staticmethod
    def _finish(choice: _Choice) -> Generation:
        choice.result.text = choice.text
        return choice.result

    def token_logprobs(
        self,
        ids: list[int],
        top: int = 0,
        batch: int = 8,
        deadline: Deadline | None = None,
        window: int | None = None,
    ) -> tuple[np.ndarray, list[list[tuple[int, float]]]]:
        """Log-probability of each of ``ids[1:]`` after the tokens before it, with windows of
        ``window`` tokens (default: the scoring length) laid as window_plan lays them for this
        model's context (every token sees at least half a window, or the whole context where
        that is less), and the ``top`` likeliest tokens at each of those positions."""
        window = window or self.score_window
        stream = np.asarray(ids, dtype=np.int64)
        plan = window_plan(len(ids), window, self.context)
        length = min(window, len(ids) - 1)
        offsets = np.arange(length)
        picked_all = np.zeros(len(ids) - 1, dtype=np.float64)
        best: list[list[tuple[int, float]]] = [[] for _ in range(len(ids) - 1)]
        for i in range(0, len(plan), batch):
            if deadline is not None:
                deadline.check()
            chunk = plan[i : i + batch]
            starts = np.asarray([s for s, _ in chunk])[:, None]
            x = stream[starts + offsets]  # (B, L)
            # Logits only from the first position any window of the chunk scores: the rest
            # belong to its neighbours, and skipping them skips their output layer.
            skip = min(first for _, first in chunk)
            positions = np.broadcast_to(offsets[skip:], (len(chunk), length - skip))
            logits = self._logits(x, positions)  # (B, L - skip, V)
            for row, (start, first) in enumerate(chunk):
                logp = log_softmax(logits[row, first - skip :])  # (L - first, V)
                targets = stream[start + first + 1 : start + length + 1]  # (L - first,)
                picked_all[start + first : start + length] = logp[np.arange(len(targets)), targets]
                if top:
                    for t, pairs in enumerate(likeliest(logp, top), start + first):
                        best[t] = pairs
        return picked_all, best

    def score(
        self,
        text: str,
        per_token: bool,
        batch: int = 8,
        deadline: Deadline | None = None,
        window: int | None = None,
    ) -> Score:
        """NLL of ``text`` after an end-of-text token, with the windows of token_logprobs of
        ``window`` tokens (default, and at most: the scoring length; the result says which)."""
        window = min(window or self.score_window, self.score_window)
        ids = self.prompt_ids(text)
        token_logprobs, _ = self.token_logprobs(ids, 0, batch, deadline, window)
        length = min(window, len(ids) - 1)
        nll = float(-token_logprobs.sum())
        normalizer = self.tokenizer.normalizer
        chars = len(normalizer.normalize_str(text)) if normalizer else len(text)
        per = None
        if per_token:
            targets = ids[1:]
            texts = self.token_texts(targets)
            per = [
                TokenScore(t, s, float(lp))
                for t, s, lp in zip(targets, texts, token_logprobs, strict=True)
            ]
        return Score(
            tokens=len(ids) - 1,
            characters=chars,
            nll_nats=nll,
            nll_bits=nll / math.log(2),
            perplexity=math.exp(nll / (len(ids) - 1)),
            bits_per_character=nll / math.log(2) / chars,
            window=length,
            stride=stride_of(length, self.context),
            token_logprobs=per,
        )

    def attention(
        self,
        prompt: str,
        max_tokens: int,
        layer: int | None,
        head: int | None,
        vectors: bool = False,
    ) -> AttentionMaps:
        """The weights of the prompt's last ``max_tokens`` tokens (runtime.maps)."""
        return attention_maps(self, prompt, max_tokens, layer, head, vectors)


# What a model is asked before it serves (and by `python -m service --check`).
