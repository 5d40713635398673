"""The batches a training step learns from: random windows of the train stream, sampled on the
device, a share of them starting a text as the service reads a prompt."""

from __future__ import annotations

from pathlib import Path

import torch


def line_end_ids(data_dir: Path) -> torch.Tensor:
    """Ids of the prepared tokenizer's tokens whose text ends a line: a paragraph starts after
    each of them in the cleaned stream (paragraphs are joined by newlines)."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(Path(data_dir) / "tokenizer.json"))
    ends = [i for i in range(tokenizer.get_vocab_size()) if tokenizer.decode([i]).endswith("\n")]
    return torch.tensor(ends, dtype=torch.long)


class Batches:
    """Random windows of the train stream, sampled on the device with a seeded generator.

    With ``text_starts`` > 0, that share of each batch's windows start a text as the service
    reads a prompt: end-of-text first, then the stream from the start of a paragraph (a position
    after a token that ends a line). Windows laid at random offsets alone put end-of-text at a
    window's start about once in every document (110 times in the training split), so a model
    would learn little of how a text begins (``python -m training starts`` measures it)."""

    def __init__(
        self,
        tokens: torch.Tensor,
        length: int,
        batch: int,
        context: int,
        seed: int,
        text_starts: float = 0.0,
        end_of_text: int = 0,
        line_ends: torch.Tensor | None = None,
    ):
        if len(tokens) <= length + 1:
            raise ValueError(f"train split has {len(tokens)} tokens, needs more than {length + 1}")
        self.tokens = tokens
        self.batch = batch
        self.offsets = torch.arange(length, device=tokens.device)  # (L,)
        self.generator = torch.Generator(device=tokens.device).manual_seed(seed)
        # A model that sees fewer tokens than the window: its first positions would only see a
        # window's truncated start, not the real text before it, so they are not trained on.
        self.blind = min(length, context - 1) if context < length else 0
        self.starting = round(text_starts * batch)
        self.end_of_text = end_of_text
        if self.starting:
            if line_ends is None:
                raise ValueError("text_starts needs the ids of the tokens that end a line")
            after = torch.isin(tokens[:-1], line_ends.to(tokens.device)).nonzero()[:, 0] + 1
            self.paragraphs = after[after < len(tokens) - length]  # (P,) where a text can start
            if len(self.paragraphs) == 0:
                raise ValueError("text_starts: the train split has no line end to start after")

    def __call__(self) -> tuple[torch.Tensor, torch.Tensor]:
        high = len(self.tokens) - len(self.offsets) - 1
        device = self.tokens.device
        plain = self.batch - self.starting
        starts = torch.randint(0, high, (plain, 1), device=device, generator=self.generator)
        x = self.tokens[starts + self.offsets]  # (B - S, L)
        y = self.tokens[starts + self.offsets + 1]  # (B - S, L)
        if self.blind:
            y = y.masked_fill((self.offsets < self.blind) & (starts > 0), -1)
        if not self.starting:
            return x, y
        picked = torch.randint(
            0, len(self.paragraphs), (self.starting,), device=device, generator=self.generator
        )
        text = self.paragraphs[picked][:, None] + self.offsets  # (S, L)
        # End-of-text, then the text: every position reads the text's real start, so the first
        # positions are trained on too (they are what a prompt's first tokens meet).
        eot = torch.full((self.starting, 1), self.end_of_text, device=device, dtype=x.dtype)
        x_text = torch.cat([eot, self.tokens[text[:, :-1]]], dim=1)  # (S, L)
        y_text = self.tokens[text]  # (S, L)
        return torch.cat([x, x_text]), torch.cat([y, y_text])
