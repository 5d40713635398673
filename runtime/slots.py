"""Generation on key/value cache slots: the cache stays where the graph writes it.

A model's ``SlotCache`` holds, for each layer, one key and one value buffer of ``slots`` rows of
the whole context (runtime/decode_graph.py's graph reads and writes them in place through ONNX
Runtime's I/O binding). A generation takes a slot per sequence for its life (``SlotContext``,
which stands in for ``kv_cache.CachedContext``); ``SlotBatcher`` runs the one-token steps of
every generation that asks at the same time as one graph call over the slots' rows, a prompt
(prefill) in a call of its own. Nothing copies a cache from step to step: a step moves only the
new tokens in and the logits out. Rows of the called range whose generation is not in the step
(it is choosing its token, or the slot is free) compute a throwaway token written past their
length, where their own next token overwrites it before anything reads it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np
import onnxruntime as ort

from runtime.batching import _Batcher

# (slots, each slot's tokens to add): one token each for a decode step; a prefill's window
SlotStep = tuple[list[int], list[list[int]]]


class SlotCache:
    """The cache buffers of ``slots`` sequences and their lengths, and the graph that steps them."""

    def __init__(self, session: ort.InferenceSession, slots: int, config: dict) -> None:
        layers, self.heads = int(config["n_layer"]), int(config["n_head"])
        self.context = int(config["context"])
        head_dim = int(config["d_model"]) // self.heads
        shape = (slots, self.heads, self.context, head_dim)
        self.session = session
        self.buffers = [
            (np.zeros(shape, np.float32), np.zeros(shape, np.float32)) for _ in range(layers)
        ]
        self.lengths = np.zeros(slots, dtype=np.int64)  # tokens held by each slot
        self.slots = slots
        self._free = list(range(slots))
        self._lock = threading.Lock()

    def acquire(self, count: int) -> list[int] | None:
        """``count`` free slots (the lowest, so that busy rows stay together), or None."""
        with self._lock:
            if len(self._free) < count:
                return None
            taken, self._free = self._free[:count], self._free[count:]
            return taken

    def release(self, slots: list[int]) -> None:
        with self._lock:
            self._free = sorted({*self._free, *slots})

    @property
    def free(self) -> int:
        return len(self._free)

    def run(self, lo: int, ids: np.ndarray, positions: np.ndarray, last: np.ndarray) -> np.ndarray:
        """Logits (B, V) of rows ``lo`` to ``lo + B`` after adding ``ids`` (B, S) at
        ``positions`` (right-padded; ``last`` (B,): each row's last real token), their lengths
        then being ``positions[:, last] + 1``."""
        rows = ids.shape[0]
        totals = positions[np.arange(rows), last] + 1
        binding = self.session.io_binding()
        binding.bind_cpu_input("input_ids", np.ascontiguousarray(ids, dtype=np.int64))
        binding.bind_cpu_input("positions", np.ascontiguousarray(positions, dtype=np.int64))
        binding.bind_cpu_input("last", np.ascontiguousarray(last[:, None], dtype=np.int64))
        binding.bind_cpu_input("seqlens_k", (totals - 1).astype(np.int32))
        binding.bind_cpu_input("total_sequence_length", np.array(totals.max(), dtype=np.int32))
        binding.bind_output("logits")
        for layer, pair in enumerate(self.buffers):
            for kind, buffer in zip(("key", "value"), pair, strict=True):
                view = ort.OrtValue.ortvalue_from_numpy(buffer[lo : lo + rows])  # no copy
                binding.bind_ortvalue_input(f"past_{kind}_{layer}", view)
                binding.bind_ortvalue_output(f"present_{kind}_{layer}", view)
        self.session.run_with_iobinding(binding)
        return binding.get_outputs()[0].numpy()  # the logits only: the caches stay in place


class SlotBatcher(_Batcher[SlotStep]):
    """``batcher(slots, tokens, key)``: the next-token logits (B, V) of each slot after adding
    its tokens; one-token steps of concurrent generations share a call."""

    def __init__(
        self,
        cache: SlotCache,
        max_rows: int,
        on_batch: Callable[[int], None] | None = None,
        max_wait: float = 0.0,
    ) -> None:
        """``max_rows``: the most sequences one step computes for (the settings' batch rows)."""
        super().__init__(max_rows, on_batch, max_wait)
        self.cache = cache

    def __call__(self, slots: list[int], tokens: list[list[int]], key: object | None = None):
        return self._submit((slots, tokens), len(slots), key)

    @staticmethod
    def _one_token(step: SlotStep) -> bool:
        return all(len(t) == 1 for t in step[1])

    def _fits(self, batch, call) -> bool:
        return self._one_token(call.request) and all(self._one_token(c.request) for c in batch)

    def _compute(self, requests: list[SlotStep]) -> list[np.ndarray]:
        if len(requests) == 1 and not self._one_token(requests[0]):
            return [self._prefill(*requests[0])]
        cache = self.cache
        slots = [s for step in requests for s in step[0]]
        lo, hi = min(slots), max(slots) + 1
        # Every row of the range steps: the others write a throwaway token at their length
        # (within the buffer: a full row's next call restarts it anyway).
        ids = np.zeros((hi - lo, 1), dtype=np.int64)
        positions = np.minimum(cache.lengths[lo:hi], cache.context - 1)[:, None].copy()
        for step in requests:
            for slot, tokens in zip(*step, strict=True):
                ids[slot - lo, 0] = tokens[0]
        logits = cache.run(lo, ids, positions, np.zeros(hi - lo, dtype=np.int64))
        cache.lengths[slots] += 1
        return [logits[np.asarray(step[0]) - lo] for step in requests]

    def _prefill(self, slots: list[int], tokens: list[list[int]]) -> np.ndarray:
        """Each slot's tokens from its current length on (0 after a restart): one call over the
        slots where they are contiguous and of one length, else a call each."""
        cache = self.cache
        if slots == list(range(slots[0], slots[0] + len(slots))) and len({*map(len, tokens)}) == 1:
            groups = [(slots, tokens)]
        else:
            groups = [([s], [t]) for s, t in zip(slots, tokens, strict=True)]
        out = []
        for group, rows in groups:
            steps = len(rows[0])
            start = cache.lengths[group][:, None]
            positions = start + np.arange(steps)[None]
            logits = cache.run(
                group[0], np.asarray(rows), positions, np.full(len(group), steps - 1)
            )
            cache.lengths[group] += steps
            out.append(logits)
        return np.concatenate(out)


class SlotContext:
    """Next-token logits of growing token sequences on cache slots (``CachedContext``'s
    contract: the first call reads the last ``context`` tokens, each later one the tokens
    added since, and past the context the window restarts with its last 3/4)."""

    def __init__(
        self, batcher: SlotBatcher, slots: list[int], context: int, key: object | None = None
    ) -> None:
        self.batcher = batcher
        self.slots = slots
        self.context = context
        self.refill = max(1, context * 3 // 4)
        self.key = key
        self.seen = 0  # length of the sequences at the last call
        self.cached = 0  # tokens the slots hold

    def _restart(self, rows: list[list[int]], keep: int) -> np.ndarray:
        self.batcher.cache.lengths[self.slots] = 0
        self.cached = min(keep, len(rows[0]))
        return self.batcher(self.slots, [row[-keep:] for row in rows], self.key)

    def next_logits_rows(self, rows: list[list[int]]) -> np.ndarray:
        """Logits (B, V) of the token after each of ``rows``, sequences of one length."""
        length = len(rows[0])
        if any(len(row) != length for row in rows) or len(rows) != len(self.slots):
            raise ValueError("the rows must have one length, one row per slot")
        new, self.seen = length - self.seen, length
        if self.cached == 0 or new != 1:  # the first call, or one that is not a next token
            return self._restart(rows, self.context)
        if self.cached + 1 > self.context:
            return self._restart(rows, self.refill)
        self.cached += 1
        return self.batcher(self.slots, [row[-1:] for row in rows], self.key)

    def keep(self, rows: list[int]) -> None:
        """Hold on to these rows only (by index in the last call's batch)."""
        kept = [self.slots[r] for r in rows]
        self.batcher.cache.release([s for s in self.slots if s not in kept])
        self.slots = kept

    def close(self) -> None:
        """The generation has ended: its slots are free."""
        self.batcher.cache.release(self.slots)
        self.slots = []
