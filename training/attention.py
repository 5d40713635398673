"""Causal multi-head self-attention (Vaswani et al. 2017, "Attention Is All You Need"), three ways.

One layer, one set of parameters (WQ, WK, WV, WO), three interchangeable cores:

1. ``loops``: Python loops over batch, head, query and key, the course notebook's way to teach
   the mechanism one number at a time. Slow on purpose.
2. ``matrix``: the same computation as batched matrix products with a causal mask.
3. ``fused``: ``torch.nn.functional.scaled_dot_product_attention``, which picks a fused kernel
   (FlashAttention on a GPU) and never materialises the attention matrix.

All three agree to 1e-5 in fp32 (tests/training/test_attention.py). Only ``loops`` and
``matrix`` can hand back the attention weights; asking ``fused`` for them computes them with the
matrix core, so every implementation honours the same interface.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Implementation = Literal["loops", "matrix", "fused"]
IMPLEMENTATIONS: tuple[str, ...] = ("loops", "matrix", "fused")


def attention_loops(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal attention with plain Python loops. q, k, v: (B, H, T, Dh) -> (out, weights)."""
    batch, heads, steps, head_dim = q.shape
    scale = 1.0 / math.sqrt(head_dim)
    out = torch.zeros_like(v)
    weights = torch.zeros(batch, heads, steps, steps, dtype=q.dtype, device=q.device)
    for b in range(batch):
        for h in range(heads):
            for i in range(steps):
                # Score of query i against every key it may see: keys 0..i (causal).
                scores = []
                for j in range(i + 1):
                    scores.append(torch.dot(q[b, h, i], k[b, h, j]) * scale)
                # Softmax over those scores, shifted by their maximum for numerical stability.
                top = max(scores)
                exps = [torch.exp(s - top) for s in scores]
                total = sum(exps)
                # The output is the average of the values, weighted by the softmax.
                acc = torch.zeros(head_dim, dtype=q.dtype, device=q.device)
                for j in range(i + 1):
                    weight = exps[j] / total
                    weights[b, h, i, j] = weight
                    acc = acc + weight * v[b, h, j]
                out[b, h, i] = acc
    return out, weights


def attention_matrix(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal attention with batched matrix products. q, k, v: (B, H, T, Dh) -> (out, weights)."""
    steps, head_dim = q.shape[-2], q.shape[-1]
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(head_dim)  # (B, H, T, T)
    future = torch.ones(steps, steps, dtype=torch.bool, device=q.device).triu(1)  # (T, T)
    scores = scores.masked_fill(future, float("-inf"))
    weights = torch.softmax(scores, dim=-1)  # (B, H, T, T), each row sums to 1
    return weights @ v, weights  # (B, H, T, Dh)


def attention_fused(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal attention with PyTorch's fused kernel. q, k, v: (B, H, T, Dh) -> (B, H, T, Dh)."""
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with projections WQ, WK, WV and WO."""

    def __init__(
        self,
        d_model: int,
        n_head: int,
        dropout: float = 0.0,
        implementation: Implementation = "fused",
        bias: bool = True,
    ) -> None:
        super().__init__()
        if d_model % n_head:
            raise ValueError(f"d_model {d_model} is not divisible by n_head {n_head}")
        self.n_head = n_head
        self.implementation = implementation
        self.wq = nn.Linear(d_model, d_model, bias=bias)
        self.wk = nn.Linear(d_model, d_model, bias=bias)
        self.wv = nn.Linear(d_model, d_model, bias=bias)
        self.wo = nn.Linear(d_model, d_model, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, steps, width = x.shape
        heads = x.view(batch, steps, self.n_head, width // self.n_head)  # (B, T, H, Dh)
        return heads.transpose(1, 2)  # (B, H, T, Dh)

    def forward(
        self, x: torch.Tensor, return_weights: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x: (B, T, D) -> (output (B, T, D), weights (B, H, T, T) or None)."""
        if self.implementation not in IMPLEMENTATIONS:
            raise ValueError(
                f"attention implementation {self.implementation!r} is not one of {IMPLEMENTATIONS}"
            )
        batch, steps, width = x.shape
        q, k, v = self._heads(self.wq(x)), self._heads(self.wk(x)), self._heads(self.wv(x))
        weights = None
        if self.implementation == "loops":
            out, weights = attention_loops(q, k, v)
        elif self.implementation == "matrix" or return_weights:
            out, weights = attention_matrix(q, k, v)
        else:
            out = attention_fused(q, k, v)
        out = out.transpose(1, 2).reshape(batch, steps, width)  # (B, T, D)
        return self.dropout(self.wo(out)), (weights if return_weights else None)

    def forward_cached(
        self,
        x: torch.Tensor,
        past_keys: torch.Tensor,
        past_values: torch.Tensor,
        key_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Attention of new tokens over the cached keys and values of the tokens before them.

        x: (B, T, D), the T tokens after the past's P; past_keys, past_values: (B, H, P, Dh);
        key_mask: (B, P+T), False for keys no query may see (the padding that lines up caches of
        different lengths in one batch).
        -> (output (B, T, D), keys (B, H, P+T, Dh), values (B, H, P+T, Dh)). With P = 0 this is
        ``forward``; token by token it computes the same thing again without the earlier rows.
        """
        batch, steps, width = x.shape
        q = self._heads(self.wq(x))
        keys = torch.cat([past_keys, self._heads(self.wk(x))], dim=2)
        values = torch.cat([past_values, self._heads(self.wv(x))], dim=2)
        scores = (q @ keys.transpose(-2, -1)) / math.sqrt(q.shape[-1])  # (B, H, T, P+T)
        query_at = torch.arange(steps, device=x.device) + past_keys.shape[2]  # (T,)
        key_at = torch.arange(keys.shape[2], device=x.device)  # (P+T,)
        hidden = (key_at[None, :] > query_at[:, None])[None, None]  # (1, 1, T, P+T)
        if key_mask is not None:
            hidden = hidden | ~key_mask[:, None, None, :]  # (B, 1, T, P+T)
        # The lowest finite score, not -inf: a query that sees no key (a padding row) gets
        # finite nonsense instead of NaN, which would reach real rows through 0 * NaN. Real rows
        # see their own key, so exp(lowest - max) is exactly 0 there, as with -inf.
        scores = scores.masked_fill(hidden, torch.finfo(scores.dtype).min)
        out = torch.softmax(scores, dim=-1) @ values  # (B, H, T, Dh)
        out = out.transpose(1, 2).reshape(batch, steps, width)
        return self.dropout(self.wo(out)), keys, values
