"""Decoder-only attention language model (Vaswani et al. 2017; GPT-style, as in nanoGPT).

Token embedding + learned positional embedding -> N blocks of (causal multi-head self-attention
with WQ, WK, WV, WO; 2-layer GELU feed-forward), each with a residual connection and a
LayerNorm in front of it (pre-LN, which trains without warm-up tricks) -> final LayerNorm ->
output layer over the vocabulary, tied to the token embedding.

Changes from the 2017 paper: pre-LN instead of post-LN, learned positions instead of sinusoids,
GELU instead of ReLU, tied output weights. The ``seed`` preset is the course notebook's model:
one layer, one head.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from training.attention import IMPLEMENTATIONS, CausalSelfAttention, Implementation


@dataclass(frozen=True)
class AttentionConfig:
    vocab_size: int = 8192  # tokens of the tokenizer
    context: int = 256  # most tokens the model sees at once (learned positions)
    n_layer: int = 6  # transformer blocks
    n_head: int = 6  # attention heads per block
    d_model: int = 384  # width of the residual stream
    ffn_mult: int = 4  # feed-forward hidden width = ffn_mult * d_model
    dropout: float = 0.2  # dropout on embeddings, attention output and feed-forward output
    attention: Implementation = "fused"  # self-attention core: loops, matrix or fused

    def __post_init__(self) -> None:
        """A config that cannot train says so here, not as a NaN loss or a shape error later."""
        for name in ("vocab_size", "context", "n_layer", "n_head", "d_model", "ffn_mult"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ValueError(f"{name} must be a whole number of at least 1, got {value!r}")
        if type(self.dropout) not in (int, float) or not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be at least 0 and below 1, got {self.dropout!r}")
        if self.d_model % self.n_head:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_head {self.n_head}")
        if self.attention not in IMPLEMENTATIONS:
            raise ValueError(f"attention {self.attention!r} is not one of {IMPLEMENTATIONS}")

    @property
    def kind(self) -> str:
        return "attention"


ATTENTION_PRESETS: dict[str, AttentionConfig] = {
    # Smoke tests and CI: trains in a minute on a laptop CPU.
    "tiny": AttentionConfig(context=64, n_layer=2, n_head=2, d_model=64, dropout=0.1),
    # The course notebook: one attention layer, one head, the Bengio preset's context (the
    # shipped attention-seed is this at the shipped Bengio's context, 4).
    "seed": AttentionConfig(context=8, n_layer=1, n_head=1, d_model=256, dropout=0.1),
    # About 5 M parameters: the CPU throughput benchmark of ../shared/REFERENCE.md.
    "small": AttentionConfig(context=128, n_layer=4, n_head=4, d_model=256, dropout=0.2),
    # The shipped model; dropout 0.3 beat 0.2 on validation (models/attention/card.json).
    "base": AttentionConfig(context=256, n_layer=6, n_head=6, d_model=384, dropout=0.3),
}


class FeedForward(nn.Module):
    """Two linear layers with a GELU between them."""

    def __init__(self, config: AttentionConfig) -> None:
        super().__init__()
        hidden = config.ffn_mult * config.d_model
        self.up = nn.Linear(config.d_model, hidden)
        self.down = nn.Linear(hidden, config.d_model)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.down(F.gelu(self.up(x))))


class Block(nn.Module):
    """x + attention(LN(x)), then x + feed-forward(LN(x))."""

    def __init__(self, config: AttentionConfig) -> None:
        super().__init__()
        self.ln_attention = nn.LayerNorm(config.d_model)
        self.attention = CausalSelfAttention(
            config.d_model, config.n_head, config.dropout, config.attention
        )
        self.ln_ffn = nn.LayerNorm(config.d_model)
        self.ffn = FeedForward(config)

    def forward(
        self, x: torch.Tensor, return_weights: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        attended, weights = self.attention(self.ln_attention(x), return_weights)
        x = x + attended
        return x + self.ffn(self.ln_ffn(x)), weights


class AttentionLM(nn.Module):
    """The attention language model; ``forward(idx, targets) -> (logits, loss)``."""

    def __init__(self, config: AttentionConfig) -> None:
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.d_model)
        self.position_embedding = nn.Embedding(config.context, config.d_model)
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_final = nn.LayerNorm(config.d_model)
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.head.weight = self.token_embedding.weight  # tied (Press & Wolf 2017)
        self.apply(self._init_weights)
        # Residual projections scaled down with depth (GPT-2), so the stream's variance stays put.
        for name, param in self.named_parameters():
            if name.endswith(("attention.wo.weight", "ffn.down.weight")):
                nn.init.normal_(param, std=0.02 / (2 * config.n_layer) ** 0.5)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)

    @property
    def context_size(self) -> int:
        return self.config.context

    @property
    def block_size(self) -> int:
        """Sequence length for training and evaluation windows."""
        return self.config.context

    def set_attention(self, implementation: Implementation) -> None:
        """Switch every layer to another self-attention core; the weights stay the same."""
        for block in self.blocks:
            block.attention.implementation = implementation

    def hidden_states(
        self, idx: torch.Tensor, return_weights: bool = False
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """idx: (B, T) -> final normalised states (B, T, D) and per-layer weights (B, H, T, T)."""
        steps = idx.shape[1]
        if steps > self.config.context:
            raise ValueError(
                f"context has {steps} tokens, model accepts at most {self.config.context}"
            )
        positions = torch.arange(steps, device=idx.device)  # (T,)
        x = self.dropout(self.token_embedding(idx) + self.position_embedding(positions))
        all_weights = []
        for block in self.blocks:
            x, weights = block(x, return_weights)
            if weights is not None:
                all_weights.append(weights)
        return self.ln_final(x), all_weights

    def logits_at(self, idx: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Logits of chosen positions only: idx (B, T), positions (B, K) -> (B, K, V).

        Generation asks for the last position alone and skips the output layer everywhere else.
        """
        states, _ = self.hidden_states(idx)
        index = positions.unsqueeze(-1).expand(-1, -1, states.shape[-1])  # (B, K, D)
        return self.head(torch.gather(states, 1, index))

    def decode(
        self,
        idx: torch.Tensor,
        past_keys: torch.Tensor,
        past_values: torch.Tensor,
        positions: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Generation with a key/value cache: the logits of the last of new tokens.

        idx: (B, T) tokens after the P tokens whose keys and values every layer cached in
        past_keys, past_values: (L, B, H, P, Dh). positions: (B, T), where each row's new tokens
        sit (default P..P+T-1, < context). attention_mask: (B, P+T), 1 for the keys a row's
        queries may see, 0 for padding: rows whose caches differ in length share a batch once
        the shorter ones are padded in front, their positions saying where they really are.
        -> (logits (B, V), keys (L, B, H, P+T, Dh), values (L, B, H, P+T, Dh)). P = 0 reads a
        prompt (prefill); then one token a call reuses everything computed before it.
        """
        past = past_keys.shape[3]
        if positions is None:
            positions = (torch.arange(idx.shape[1], device=idx.device) + past)[None]
        key_mask = None if attention_mask is None else attention_mask.bool()
        x = self.dropout(self.token_embedding(idx) + self.position_embedding(positions))
        keys, values = [], []
        for layer, block in enumerate(self.blocks):
            attended, k, v = block.attention.forward_cached(
                block.ln_attention(x), past_keys[layer], past_values[layer], key_mask
            )
            x = x + attended
            x = x + block.ffn(block.ln_ffn(x))
            keys.append(k)
            values.append(v)
        # (B, 1, D) rather than (B, D): exported, the tied head stays a MatMul on the embedding's
        # Transpose, not a Gemm on the embedding itself, which int8 quantization would rewrite
        # under the embedding lookup's feet.
        logits = self.head(self.ln_final(x[:, -1:]))[:, 0]  # (B, V)
        return logits, torch.stack(keys), torch.stack(values)

    def empty_cache(self, batch: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of no tokens yet: (L, B, H, 0, Dh) each."""
        config = self.config
        shape = (config.n_layer, batch, config.n_head, 0, config.d_model // config.n_head)
        return torch.zeros(shape), torch.zeros(shape)

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx: (B, T) -> logits (B, T, V) and the mean cross-entropy over targets != -1."""
        states, _ = self.hidden_states(idx)
        logits = self.head(states)  # (B, T, V)
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-1)
        return logits, loss
