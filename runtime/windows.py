"""How a text longer than a model's window is scored: overlapping windows, each token once.

The service's /score and the training's evaluation lay their windows the same way, so the
figures they give for one text agree.
"""

from __future__ import annotations


def window_plan(n_tokens: int, length: int, reads: int | None = None) -> list[tuple[int, int]]:
    """(start, first scored index) of windows predicting tokens 1..n-1, overlapping by half a
    window, or by ``reads - 1`` tokens where that is less: a model that reads only its last
    ``reads`` tokens (Bengio's n) then still reads all of them at every scored index, and
    scores the same with fewer windows."""
    last = n_tokens - 1
    if last < 1:
        return []
    length = min(length, last)
    stride = stride_of(length, reads)
    plan, covered = [(0, 0)], length
    while covered < last:
        start = min(covered + stride - length, last - length)
        plan.append((start, covered - start))
        covered = start + length
    return plan


def stride_of(length: int, reads: int | None = None) -> int:
    """Tokens between the starts of two scoring windows of ``length`` (see window_plan)."""
    overlap = length - max(1, length // 2)
    if reads is not None:
        overlap = min(overlap, reads - 1)
    return length - overlap


def scoring_window(card: dict) -> int:
    """Tokens per window of /score: the attention model's context; the Bengio model's training
    block (it reads its n tokens out of any window, so a longer window only batches better)."""
    return int(card["config"].get("block", card["context"]))
