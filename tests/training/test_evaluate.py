"""Sliding-window evaluation: every token scored once, with enough context, exactly."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from runtime.windows import window_plan
from training.attention_lm import AttentionConfig, AttentionLM
from training.bengio import BengioConfig, BengioLM
from training.evaluate import metrics, stream_nll


@pytest.mark.parametrize(
    ("n_tokens", "length"), [(2, 8), (9, 8), (10, 8), (57, 8), (100, 16), (1000, 64), (33, 5)]
)
def test_window_plan_scores_every_target_once_with_half_a_window(n_tokens, length):
    scored = []
    for start, first in window_plan(n_tokens, length):
        window = min(length, n_tokens - 1)
        assert start >= 0 and start + window <= n_tokens - 1
        for local in range(first, window):
            target = start + local + 1
            scored.append(target)
            if start > 0:
                assert local + 1 >= window // 2, f"target {target} sees only {local + 1} tokens"
    assert sorted(scored) == list(range(1, n_tokens))


@pytest.mark.parametrize(
    ("n_tokens", "length", "reads"),
    [(2, 8, 4), (9, 8, 4), (57, 8, 3), (100, 16, 1), (1000, 64, 8), (1000, 64, 64), (33, 5, 9)],
)
def test_window_plan_scores_every_target_once_reading_what_the_model_reads(n_tokens, length, reads):
    """A model that reads its last ``reads`` tokens gets all of them at every scored target
    (past the first window), from windows that overlap by no more than that."""
    scored = []
    window = min(length, n_tokens - 1)
    for start, first in window_plan(n_tokens, length, reads):
        assert start >= 0 and start + window <= n_tokens - 1
        for local in range(first, window):
            scored.append(start + local + 1)
            if start > 0:
                needed = min(reads, window // 2)
                assert local + 1 >= needed, f"target {start + local + 1} sees {local + 1} tokens"
    assert sorted(scored) == list(range(1, n_tokens))


def test_window_plan_of_a_short_reader_takes_fewer_windows():
    assert len(window_plan(10_000, 128, 8)) < 0.55 * len(window_plan(10_000, 128))


def test_stream_nll_of_bengio_gives_every_token_its_full_context():
    """Bengio's windows overlap by n - 1 tokens only, and score as one window over the stream."""
    torch.manual_seed(0)
    model = BengioLM(BengioConfig(vocab_size=30, context=4, d_embedding=4, d_hidden=8, block=16))
    tokens = np.random.default_rng(2).integers(1, 30, 300)
    windowed = stream_nll(model.eval(), tokens, model.block_size, batch_size=5)
    whole = stream_nll(model, tokens, len(tokens) - 1)
    assert windowed[1] == whole[1] == 299
    assert math.isclose(windowed[0], whole[0], rel_tol=1e-6), (windowed, whole)


def test_window_plan_empty_stream():
    assert window_plan(1, 8) == []


def test_stream_nll_matches_direct_computation_when_stream_fits():
    """A stream shorter than the context is scored in one pass, like a plain forward."""
    torch.manual_seed(0)
    model = AttentionLM(
        AttentionConfig(vocab_size=30, context=32, n_layer=1, n_head=1, d_model=8, dropout=0.0)
    ).eval()
    tokens = np.random.default_rng(0).integers(0, 30, 20)
    nll, count = stream_nll(model, tokens, model.block_size, batch_size=4)
    x = torch.as_tensor(tokens[:-1])[None]
    with torch.no_grad():
        logits, _ = model(x)
    expected = torch.nn.functional.cross_entropy(
        logits[0], torch.as_tensor(tokens[1:]), reduction="sum"
    )
    assert count == 19
    assert math.isclose(nll, float(expected), rel_tol=1e-5)


def test_stream_nll_independent_of_batch_size():
    torch.manual_seed(0)
    model = AttentionLM(
        AttentionConfig(vocab_size=30, context=8, n_layer=1, n_head=1, d_model=8, dropout=0.0)
    ).eval()
    tokens = np.random.default_rng(1).integers(0, 30, 200)
    one = stream_nll(model, tokens, 8, batch_size=1)
    many = stream_nll(model, tokens, 8, batch_size=13)
    assert one[1] == many[1] == 199
    assert math.isclose(one[0], many[0], rel_tol=1e-6)


def test_metrics_bits_per_character_definition():
    result = metrics(nll_nats=1000 * math.log(2), tokens=250, characters=500)
    assert result["bits_per_character"] == pytest.approx(2.0)
    assert result["perplexity"] == pytest.approx(math.exp(1000 * math.log(2) / 250))
