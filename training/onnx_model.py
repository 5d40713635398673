"""An exported model folder run with ONNX Runtime alone: what the report and parity tests use.

Needs only onnxruntime, numpy and tokenizers, like the service.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer


class OnnxModel:
    """One model folder: its card, its tokenizer, and ONNX Runtime sessions on the CPU."""

    def __init__(self, folder: Path, threads: int = 2) -> None:
        self.folder = Path(folder)
        self.card = json.loads((self.folder / "card.json").read_text())
        self.tokenizer = Tokenizer.from_file(
            str(self.folder.parent / self.card["tokenizer"]["file"])
        )
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._options = options
        self.session = ort.InferenceSession(
            str(self.folder / "model.onnx"), options, providers=["CPUExecutionProvider"]
        )
        self._attention: ort.InferenceSession | None = None
        self.context = int(self.card["context"])
        # Bengio's windows need no more than its n tokens; the attention model its context.
        self.window = self.context

    def logits(self, ids: np.ndarray, positions: np.ndarray | None = None) -> np.ndarray:
        """ids (B, T) int64 -> logits (B, K, V) at positions (B, K) (default: every position)."""
        if positions is None:
            positions = np.broadcast_to(np.arange(ids.shape[1]), ids.shape)
        return self.session.run(
            ["logits"],
            {"input_ids": ids.astype(np.int64), "positions": positions.astype(np.int64)},
        )[0]

    def next_logits(self, ids: list[int]) -> np.ndarray:
        """Logits of the token after ``ids``, seeing at most the model's context."""
        window = np.asarray(ids[-self.window :], dtype=np.int64)[None]
        return self.logits(window, np.asarray([[window.shape[1] - 1]]))[0, 0]

    def attentions(self, ids: list[int]) -> np.ndarray:
        """Attention weights (layer, head, query, key) of a sequence."""
        return self.attention_batch(np.asarray(ids[-self.context :], dtype=np.int64)[None])[0]

    def attention_batch(self, ids: np.ndarray) -> np.ndarray:
        """ids (B, T), T at most the context -> attention weights (B, layer, head, query, key)."""
        if not self.card["has_attention"]:
            raise ValueError(f"model {self.card['name']} has no attention")
        if self._attention is None:
            self._attention = ort.InferenceSession(
                str(self.folder / "attention.onnx"),
                self._options,
                providers=["CPUExecutionProvider"],
            )
        positions = np.full((ids.shape[0], 1), ids.shape[1] - 1, dtype=np.int64)
        feed = {"input_ids": ids.astype(np.int64), "positions": positions}
        return self._attention.run(["attentions"], feed)[0]

    def generate(
        self,
        prompt_ids: list[int],
        new_tokens: int,
        temperature: float = 0.0,
        top_k: int = 0,
        seed: int = 0,
    ) -> list[int]:
        """Greedy (temperature 0) or top-k sampling; returns the new token ids."""
        rng = np.random.default_rng(seed)
        ids = list(prompt_ids)
        for _ in range(new_tokens):
            logits = self.next_logits(ids).astype(np.float64)
            if temperature <= 0:
                token = int(np.argmax(logits))
            else:
                logits = logits / temperature
                if top_k:
                    cut = np.partition(logits, -top_k)[-top_k]
                    logits = np.where(logits < cut, -np.inf, logits)
                probs = np.exp(logits - logits.max())
                token = int(rng.choice(len(probs), p=probs / probs.sum()))
            ids.append(token)
        return ids[len(prompt_ids) :]
