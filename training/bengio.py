"""Neural probabilistic language model of Bengio, Ducharme, Vincent and Jauvin (2003, JMLR).

y = b + W x + U tanh(d + H x), where x is the concatenation of the embeddings of the n previous
tokens and W x is the paper's optional direct connection from embeddings to output.

Changes from the paper: dropout on x and on the hidden layer, AdamW instead of plain SGD, and
every position of a sequence predicted in one pass (the windows are gathered from one embedding
lookup). A window that reaches before the start of a document is padded with the end-of-text
token instead of being skipped, so the first tokens of every document are predicted too.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class BengioConfig:
    vocab_size: int = 8192  # tokens of the tokenizer
    context: int = 8  # n: previous tokens the model sees
    d_embedding: int = 128  # m: embedding width per token
    d_hidden: int = 1024  # h: tanh hidden units
    direct: bool = True  # the paper's direct embedding-to-output connections (W)
    dropout: float = 0.1  # dropout on the concatenated embeddings and the hidden layer
    block: int = 128  # positions per training and evaluation window (not a model limit)
    pad_id: int = 0  # token that pads windows before a document start (end-of-text)

    def __post_init__(self) -> None:
        """A config that cannot train says so here, not as a NaN loss or a shape error later."""
        for name in ("vocab_size", "context", "d_embedding", "d_hidden", "block"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ValueError(f"{name} must be a whole number of at least 1, got {value!r}")
        if type(self.dropout) not in (int, float) or not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be at least 0 and below 1, got {self.dropout!r}")
        if type(self.direct) is not bool:
            raise ValueError(f"direct must be True or False, got {self.direct!r}")
        if type(self.pad_id) is not int or not 0 <= self.pad_id < self.vocab_size:
            raise ValueError(
                f"pad_id must be a token id below {self.vocab_size}, got {self.pad_id!r}"
            )

    @property
    def kind(self) -> str:
        return "bengio"


BENGIO_PRESETS: dict[str, BengioConfig] = {
    "tiny": BengioConfig(context=4, d_embedding=32, d_hidden=64, block=64),
    # The sweep's starting point; dropout 0.25 beat 0.1 on validation. The shipped bengio is
    # this preset with context=4, the sweep's choice (models/bengio/card.json).
    "base": BengioConfig(dropout=0.25),
}


class BengioLM(nn.Module):
    """The MLP language model; ``forward(idx, targets) -> (logits, loss)``."""

    def __init__(self, config: BengioConfig) -> None:
        super().__init__()
        self.config = config
        width = config.context * config.d_embedding
        self.embedding = nn.Embedding(config.vocab_size, config.d_embedding)  # C
        self.hidden = nn.Linear(width, config.d_hidden)  # H and d
        self.output = nn.Linear(config.d_hidden, config.vocab_size)  # U and b
        self.direct = nn.Linear(width, config.vocab_size, bias=False) if config.direct else None
        self.dropout = nn.Dropout(config.dropout)
        nn.init.normal_(self.embedding.weight, std=0.1)
        if self.direct is not None:
            nn.init.zeros_(self.direct.weight)

    @property
    def context_size(self) -> int:
        return self.config.context

    @property
    def block_size(self) -> int:
        return self.config.block

    def windows(self, idx: torch.Tensor) -> torch.Tensor:
        """idx: (B, T) -> for each position the n tokens ending there, (B, T, n), padded."""
        n, pad = self.config.context, self.config.pad_id
        steps = idx.shape[1]
        padded = F.pad(idx, (n - 1, 0), value=pad)  # (B, T + n - 1)
        # Shifted slices rather than unfold: plain Slice and Concat, which ONNX exports.
        windows = torch.stack([padded[:, j : j + steps] for j in range(n)], -1)  # (B, T, n)
        # Everything before the last end-of-text of a window belongs to another document:
        # count the boundaries strictly after each slot (a product with a triangular matrix).
        later = torch.ones(n, n, device=idx.device).tril(-1)  # later[k, j] = 1 where k > j
        after = (windows == pad).float() @ later  # (B, T, n)
        return windows.masked_fill(after > 0, pad)

    def _mlp(self, windows: torch.Tensor) -> torch.Tensor:
        """windows (B, K, n) -> logits (B, K, V)."""
        x = self.embedding(windows).flatten(2)  # (B, K, n * m)
        x = self.dropout(x)
        logits = self.output(self.dropout(torch.tanh(self.hidden(x))))  # (B, K, V)
        if self.direct is not None:
            logits = logits + self.direct(x)
        return logits

    def logits_at(self, idx: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Logits of chosen positions only: idx (B, T), positions (B, K) -> (B, K, V)."""
        windows = self.windows(idx)  # (B, T, n)
        index = positions.unsqueeze(-1).expand(-1, -1, windows.shape[-1])  # (B, K, n)
        return self._mlp(torch.gather(windows, 1, index))

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx: (B, T) -> logits (B, T, V) and the mean cross-entropy over targets != -1."""
        logits = self._mlp(self.windows(idx))  # (B, T, V)
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-1)
        return logits, loss
