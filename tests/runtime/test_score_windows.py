"""How /score cuts a text into windows: every token scored once, with the context it should read."""

from __future__ import annotations

import numpy as np
import pytest

from runtime.engine import Engine, stride_of, window_plan
from runtime.loader import load_models
from runtime.sampling import log_softmax
from tests.service.conftest import make_options

TEXT = (
    "Não tive filhos, não transmiti a nenhuma criatura o legado da nossa miséria. Capitu tinha "
    "os olhos de cigana oblíqua e dissimulada, e eu não sabia o que dizer, porque a vida é "
    "assim mesmo: uma ópera, e o tenor e o barítono lutavam pelo soprano. "
) * 4


@pytest.fixture(scope="module")
def engines():
    return {name: Engine(m) for name, m in load_models(make_options()).items()}


@pytest.mark.parametrize(
    ("n_tokens", "length", "reads"),
    [
        (2, 8, None),
        (57, 8, None),
        (1000, 64, None),
        (33, 5, 256),
        (1000, 128, 8),
        (300, 13, 8),
        (300, 12, 8),
        (100, 16, 1),
        (9, 8, 8),
    ],
)
def test_window_plan_scores_every_target_once_reading_what_the_model_can(n_tokens, length, reads):
    """Each target once; past the first window each reads half a window, or the model's whole
    context where that is less."""
    window = min(length, n_tokens - 1)
    needed = window // 2 if reads is None else min(window // 2, reads)
    scored = []
    for start, first in window_plan(n_tokens, length, reads):
        assert start >= 0 and start + window <= n_tokens - 1, (start, window, n_tokens)
        for local in range(first, window):
            scored.append(start + local + 1)
            if start > 0:
                assert local + 1 >= needed, f"target {start + local + 1} reads only {local + 1}"
    assert sorted(scored) == list(range(1, n_tokens))


def test_window_plan_of_a_short_reader_takes_fewer_windows():
    """Bengio's 8 tokens out of windows of 128: 121 new targets a window, not 64."""
    assert stride_of(128, 8) == 121 and stride_of(128) == 64 and stride_of(8, 256) == 4
    assert len(window_plan(10_000, 128, 8)) < 0.55 * len(window_plan(10_000, 128))


def test_bengio_scores_each_token_as_next_token_does(engines):
    """Every token's log-probability is the model's after exactly the tokens before it (its
    last n): what a next-token call on that prefix gives, for all of the text's windows."""
    engine = engines["bengio"]
    ids = engine.prompt_ids(TEXT)
    assert len(ids) > 2 * engine.score_window, len(ids)
    scored, _ = engine.token_logprobs(ids)
    targets = range(1, len(ids))
    rows = np.stack([engine.next_logits(ids[:t]) for t in targets])  # (T - 1, V)
    expected = log_softmax(rows)[np.arange(len(ids) - 1), ids[1:]]
    worst = int(np.argmax(np.abs(scored - expected)))
    assert np.allclose(scored, expected, atol=1e-4), (worst, scored[worst], expected[worst])


@pytest.mark.parametrize("name", ["attention", "attention-seed", "bengio"])
def test_top_alternatives_are_the_likeliest_at_each_scored_token(engines, name):
    """The alternatives at a token are the top of the distribution its log-probability is in."""
    engine = engines[name]
    ids = engine.prompt_ids(TEXT)
    scored, best = engine.token_logprobs(ids, top=3)
    assert len(best) == len(scored) == len(ids) - 1
    for t, pairs in enumerate(best):
        values = [v for _, v in pairs]
        assert len(pairs) == 3 and values == sorted(values, reverse=True), (t, pairs)
        top = dict(pairs)
        if ids[t + 1] in top:
            assert abs(scored[t] - top[ids[t + 1]]) < 1e-9, (t, scored[t], pairs)
        else:
            assert scored[t] <= values[-1], (t, scored[t], pairs)
