"""The attention model's key/value cache: generation that feeds each new token alone.

The decoder graph (`decoder.onnx`, exported by training/export.py) takes the keys and values of
the tokens before and returns them with the new tokens' appended; this holds them between the
steps of one generation.
"""

from __future__ import annotations

import numpy as np

from runtime.batching import DecodeBatcher, decode_feed
from runtime.loader import LoadedModel


def uses_kv_cache(model: LoadedModel) -> bool:
    """Whether generation on this model goes through its key/value cache graph (the loader
    loads it where asked for and worth it)."""
    return model.decoder_session is not None


class CachedContext:
    """Next-token logits of growing token sequences, through the key/value cache graph.

    The first call reads the last ``context`` tokens at once (what ``Engine.next_logits`` sees);
    each later call feeds only the tokens added since, at one position's cost. The graph has
    learned absolute positions, so when the cache would pass the context, the window restarts
    with the last 3/4 of the context: from then on the model sees between 3/4 of its context
    and all of it, instead of always all of it.

    Several sequences of one length (the choices of one prompt) go through as one batch, a row
    each; ``keep`` drops the rows whose sequences have finished.
    """

    def __init__(
        self,
        session,
        context: int,
        batcher: DecodeBatcher | None = None,
        key: object | None = None,
    ) -> None:
        """``batcher``: where the graph calls go, shared with other generations (``key`` names
        this one to it); by default straight to ``session``."""
        self.session = session
        self.context = context
        self.refill = max(1, context * 3 // 4)
        self.keys: np.ndarray | None = None
        self.values: np.ndarray | None = None
        self.cached = 0  # tokens whose keys and values are held
        self.seen = 0  # length of the sequences at the last call
        inputs = {i.name: i for i in session.get_inputs()}
        self.shape = inputs["past_keys"].shape  # (layers, batch, heads, T, dim)
        # Graphs exported before positions and attention_mask existed take the cache alone.
        self.masked = "attention_mask" in inputs
        self.batcher = batcher
        self.key = key

    def _step(self, ids: np.ndarray, keys: np.ndarray, values: np.ndarray):
        if self.batcher is not None:
            return self.batcher(ids, keys, values, self.key)
        if self.masked:
            return self.session.run(None, decode_feed(ids, keys, values))
        return self.session.run(None, {"input_ids": ids, "past_keys": keys, "past_values": values})

    def _empty(self, rows: int) -> np.ndarray:
        layers, _, heads, _, head_dim = self.shape
        return np.zeros((layers, rows, heads, 0, head_dim), dtype=np.float32)

    def _run(self, ids: np.ndarray, keys: np.ndarray, values: np.ndarray) -> np.ndarray:
        logits, self.keys, self.values = self._step(ids, keys, values)
        self.cached = self.keys.shape[3]
        return logits

    def next_logits(self, ids: list[int]) -> np.ndarray:
        """Logits (V,) of the token after ``ids``, a single sequence."""
        return self.next_logits_rows([ids])[0]

    def next_logits_rows(self, rows: list[list[int]]) -> np.ndarray:
        """Logits (B, V) of the token after each of ``rows``, sequences of one length."""
        length = len(rows[0])
        if any(len(row) != length for row in rows):
            raise ValueError("the rows of one cache must have one length")
        new = length - self.seen
        self.seen = length
        ids, empty = np.asarray(rows, dtype=np.int64), self._empty(len(rows))
        if self.keys is None or new <= 0 or self.keys.shape[1] != len(rows):
            return self._run(ids[:, -self.context :], empty, empty)
        if self.cached + new <= self.context:
            return self._run(ids[:, -new:], self.keys, self.values)
        return self._run(ids[:, -self.refill :], empty, empty)  # past the context

    def keep(self, rows: list[int]) -> None:
        """Hold on to these rows only (by index in the last call's batch)."""
        if self.keys is not None:
            self.keys = np.ascontiguousarray(self.keys[:, rows])
            self.values = np.ascontiguousarray(self.values[:, rows])
