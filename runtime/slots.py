"""Key/value cache slots: the cache stays where the graph writes it.

A model's ``SlotCache`` holds, for each layer, one key and one value buffer of ``slots`` rows of
the whole context (runtime/decode_graph.py's graph reads and writes them in place through ONNX
Runtime's I/O binding). A sequence holds a slot for its life; ``SlotCache.step`` adds tokens to
slots and returns the next-token logits: the one-token steps of many slots as one graph call
over the slots' rows, a prompt (prefill) in calls of its own. Nothing copies a cache from step
to step: a step moves only the new tokens in and the logits out. Rows of the called range that
are not in the step (a free slot, or one still reading its prompt) compute a throwaway token
written past their length, where their own next token overwrites it before anything reads it.
runtime/scheduler.py decides what steps when.
"""

from __future__ import annotations

import threading

import numpy as np
import onnxruntime as ort


class SlotCache:
    """The cache buffers of ``slots`` sequences and their lengths, and the graph that steps them."""

    def __init__(
        self,
        session: ort.InferenceSession,
        slots: int,
        config: dict,
        device: str = "cpu",
        dtype: type = np.float32,
        outputs: int = 1,
    ) -> None:
        """The buffers are ``dtype`` (the graph's cache type) on ``device`` ("cpu": numpy
        arrays; "cuda": ONNX Runtime's own, on the GPU, where they stay). ``outputs``: the
        most tokens of one slot a call returns logits for (``verify``)."""
        layers, self.heads = int(config["n_layer"]), int(config["n_head"])
        self.context = int(config["context"])
        head_dim = int(config["d_model"]) // self.heads
        self.row_shape = (self.heads, self.context, head_dim)
        shape = (slots, *self.row_shape)
        self.session = session
        self.device, self.dtype = device, np.dtype(dtype)
        self.row_bytes = int(np.prod(self.row_shape)) * self.dtype.itemsize

        def buffer():
            if device == "cpu":
                return np.zeros(shape, self.dtype)
            return ort.OrtValue.ortvalue_from_shape_and_type(shape, self.dtype, device, 0)

        self.buffers = [(buffer(), buffer()) for _ in range(layers)]
        self.lengths = np.zeros(slots, dtype=np.int64)  # tokens held by each slot
        self.slots = slots
        self._free = list(range(slots))
        self.vocab_size = int(config["vocab_size"])
        self._logits = np.empty((max(slots, outputs), self.vocab_size), dtype=np.float32)
        self._bindings: dict[tuple[int, int, int], ort.IOBinding] = {}
        self._lock = threading.Lock()

    def _address(self, buffer) -> int:
        return buffer.ctypes.data if isinstance(buffer, np.ndarray) else buffer.data_ptr()

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

    def _binding(self, lo: int, rows: int, outputs: int) -> ort.IOBinding:
        """The I/O binding of rows ``lo`` to ``lo + rows``: their cache buffers bound as past
        and present, the logits of ``outputs`` tokens a row to the start of one host buffer;
        made once per range (binding the buffers at every call took about a tenth of a
        one-row step), the tokens bound at each call."""
        binding = self._bindings.get((lo, rows, outputs))
        if binding is None:
            binding = self.session.io_binding()
            logits = (rows, outputs, self.vocab_size)
            binding.bind_output("logits", "cpu", 0, np.float32, logits, self._logits.ctypes.data)
            # Rows lo to lo + rows of each buffer, by address: where the graph reads the past
            # and writes the present, on the buffers' device (no copy on either side).
            shape = [rows, *self.row_shape]
            for layer, pair in enumerate(self.buffers):
                for kind, buffer in zip(("key", "value"), pair, strict=True):
                    at = self._address(buffer) + lo * self.row_bytes
                    kv = (self.device, 0, self.dtype, shape, at)
                    binding.bind_input(f"past_{kind}_{layer}", *kv)
                    binding.bind_output(f"present_{kind}_{layer}", *kv)
            self._bindings[(lo, rows, outputs)] = binding
        return binding

    def run(self, lo: int, ids: np.ndarray, positions: np.ndarray, last: np.ndarray) -> np.ndarray:
        """Logits (B, N, V) of rows ``lo`` to ``lo + B`` after adding ``ids`` (B, S) at
        ``positions`` (right-padded), of the tokens at ``last`` (B, N) in each row (the last
        of them its last real token), the rows' lengths then being ``positions[:, last] + 1``."""
        rows, outputs = last.shape
        totals = positions[np.arange(rows), last[:, -1]] + 1
        binding = self._binding(lo, rows, outputs)
        binding.bind_cpu_input("input_ids", np.ascontiguousarray(ids, dtype=np.int64))
        binding.bind_cpu_input("positions", np.ascontiguousarray(positions, dtype=np.int64))
        binding.bind_cpu_input("last", np.ascontiguousarray(last, dtype=np.int64))
        binding.bind_cpu_input("seqlens_k", (totals - 1).astype(np.int32))
        binding.bind_cpu_input("total_sequence_length", np.array(totals.max(), dtype=np.int32))
        self.session.run_with_iobinding(binding)
        # A copy: the next call writes into the same buffer.
        return self._logits[: rows * outputs].reshape(rows, outputs, -1).copy()

    def step(self, slots: list[int], tokens: list[list[int]]) -> np.ndarray:
        """The next-token logits (B, V) of each slot after adding its tokens: one token each
        as one call over the slots' range, else a prefill (``prefill``)."""
        if any(len(t) != 1 for t in tokens):
            return self.prefill(slots, tokens)
        lo, hi = min(slots), max(slots) + 1
        ids = np.zeros((hi - lo, 1), dtype=np.int64)
        # Rows of the range not in the step write a throwaway token at their length (within
        # the buffer: a full row restarts before its next call anyway).
        positions = np.minimum(self.lengths[lo:hi], self.context - 1)[:, None].copy()
        ids[np.asarray(slots) - lo, 0] = [t[0] for t in tokens]
        logits = self.run(lo, ids, positions, np.zeros((hi - lo, 1), dtype=np.int64))
        self.lengths[slots] += 1
        return logits[np.asarray(slots) - lo, 0]

    def prefill(self, slots: list[int], tokens: list[list[int]]) -> np.ndarray:
        """Each slot's tokens from its current length on: one call over the slots where they
        are contiguous, of one length and empty so far, else a call each (GroupQueryAttention
        reads several tokens of several rows only where nothing is cached yet)."""
        contiguous = slots == list(range(slots[0], slots[0] + len(slots)))
        if contiguous and len({*map(len, tokens)}) == 1 and not self.lengths[slots].any():
            groups = [(slots, tokens)]
        else:
            groups = [([s], [t]) for s, t in zip(slots, tokens, strict=True)]
        out = []
        for group, rows in groups:
            steps = len(rows[0])
            positions = self.lengths[group][:, None] + np.arange(steps)[None]
            last = np.full((len(group), 1), steps - 1)
            logits = self.run(group[0], np.asarray(rows), positions, last)
            self.lengths[group] += steps
            out.append(logits[:, 0])
        return np.concatenate(out)

    def verify(self, slot: int, tokens: list[int]) -> np.ndarray:
        """The next-token logits (T, V) after each of ``tokens`` added to ``slot``, in one call
        (speculative decoding's check of drafted tokens). The slot then holds them all: the
        caller sets ``lengths[slot]`` back to drop the ones it rejects (what lies past a
        slot's length is never read, and the next tokens overwrite it)."""
        steps = len(tokens)
        positions = self.lengths[slot] + np.arange(steps)[None]
        logits = self.run(slot, np.asarray([tokens]), positions, np.arange(steps)[None])
        self.lengths[slot] += steps
        return logits[0]


# A check of a slot graph against decoder.onnx: the first tokens of a text, then single steps.
CHECK_PROMPT = [0, 36, 551, 1651, 77, 2049, 11, 389, 72, 1530, 16, 240, 3090, 17]
CHECK_STEPS = [101, 7, 942, 15]


def slot_logits_gap(cache: SlotCache, decoder: ort.InferenceSession) -> float:
    """The largest difference between the logits of ``cache``'s graph (on its slot 0) and
    ``decoder``'s (decoder.onnx, its whole cache passed in and out) over a prompt and a few
    steps after it."""
    from runtime.batching import decode_feed

    layers, (heads, _, head_dim) = len(cache.buffers), cache.row_shape
    keys = values = np.zeros((layers, 1, heads, 0, head_dim), np.float32)
    cache.lengths[0] = 0
    gap = 0.0
    for tokens in [CHECK_PROMPT, *([t] for t in CHECK_STEPS)]:
        logits, keys, values = decoder.run(None, decode_feed(np.asarray([tokens]), keys, values))
        ours = cache.step([0], [tokens])
        gap = max(gap, float(np.abs(logits[0] - ours[0]).max()))
    return gap
