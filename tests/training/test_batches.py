"""The training batches: random windows of the train stream, and with ``text_starts`` a share of
windows that start a text as the service reads a prompt (end-of-text, then a paragraph)."""

from __future__ import annotations

import pytest
import torch

from training.batches import Batches

EOT, NEWLINE = 0, 1


def stream() -> torch.Tensor:
    """Paragraphs of distinct ids, each followed by a newline: 2..11, NL, 12..21, NL, ..."""
    tokens, next_id = [EOT], 2
    for _ in range(40):
        tokens += [*list(range(next_id, next_id + 10)), NEWLINE]
        next_id += 10
    return torch.tensor([*tokens, EOT])


def test_batches_text_starts_begin_with_end_of_text_then_a_paragraph():
    """The last share of rows read end-of-text, then a paragraph from its first token; every
    row's targets are its inputs shifted by one."""
    tokens = stream()
    batches = Batches(tokens, 8, 8, 8, seed=1, text_starts=0.25, end_of_text=EOT,
                      line_ends=torch.tensor([NEWLINE]))  # fmt: skip
    for _ in range(20):
        x, y = batches()
        assert x.shape == y.shape == (8, 8)
        assert torch.equal(x[:, 1:], y[:, :-1])
        for row in range(6, 8):
            assert x[row, 0] == EOT, x[row]
            first = int(y[row, 0])
            assert tokens[(tokens == first).nonzero()[0, 0] - 1] == NEWLINE, y[row]
            assert (y[row] != -1).all()  # every position is trained on


def test_batches_without_text_starts_are_random_windows():
    tokens = stream()
    x, y = Batches(tokens, 8, 8, 8, seed=1)()
    starts = [int((tokens == int(row[0])).nonzero()[0, 0]) for row in x if int(row[0]) > 1]
    assert len(set(starts)) > 1
    assert torch.equal(x[:, 1:], y[:, :-1])


def test_batches_text_starts_need_the_line_end_ids():
    with pytest.raises(ValueError, match="line"):
        Batches(stream(), 8, 8, 8, seed=1, text_starts=0.5)
