"""``python -m training starts``: a text's first tokens scored alone after end-of-text and
after the text before it, the same tokens both ways."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from runtime.loader import open_model
from training.context import token_nll
from training.starts import LONGEST, nll_of, paragraphs, requests_for

MODELS = Path(__file__).resolve().parents[2] / "models"


@pytest.fixture(scope="module")
def tokenizer():
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(MODELS / "tokenizer.json"))


def test_starts_paragraphs_keep_long_ones_with_what_came_before(tokenizer):
    text = "Capitu olhou para mim.\nSim.\nBentinho respondeu com calma e devagar."
    found = paragraphs([text], tokenizer, minimum=6)
    newline = tokenizer.encode("\n", add_special_tokens=False).ids
    first = tokenizer.encode("Capitu olhou para mim.", add_special_tokens=False).ids
    second = tokenizer.encode("Sim.", add_special_tokens=False).ids
    assert [p["ids"] for p in found] == [
        first[:6],
        tokenizer.encode("Bentinho respondeu com calma e devagar.", add_special_tokens=False).ids[
            :6
        ],
    ]
    assert found[0]["before"] == []
    assert found[1]["before"] == [*first, *newline, *second, *newline]
    assert sum(found[0]["chars"]) == len("Capitu olhou para mim.")  # its 6 tokens: the line


@pytest.mark.parametrize("name", ["attention", "attention-seed", "bengio"])
def test_starts_scores_each_token_as_reading_it_alone_would(name):
    """The shortcut (one window for a long context, a window per token for a short one) gives
    every target the NLL that a next-token call on exactly what precedes it gives."""
    model = open_model(MODELS / name)
    rng = np.random.default_rng(0)
    prefix = [0, *rng.integers(2, 8000, 40).tolist()]
    ids = rng.integers(2, 8000, LONGEST).tolist()
    scored = np.concatenate(nll_of(model, requests_for(model, prefix, ids)))
    sequence = prefix + ids
    for k in (0, 1, 5, 30, LONGEST - 1):
        logits = model.next_logits(sequence[: len(prefix) + k])
        expected = token_nll(logits[None, None], np.asarray([[ids[k]]]))[0, 0]
        assert abs(scored[k] - expected) < 1e-3, (name, k, scored[k], expected)
