"""Attention LM and Bengio LM: the shared contract, presets, padding and causality."""

from __future__ import annotations

import pytest
import torch

from training.attention_lm import AttentionConfig, AttentionLM
from training.bengio import BengioConfig, BengioLM
from training.checkpoint import build_model, parameter_count, preset

SMALL_ATTENTION = AttentionConfig(
    vocab_size=50, context=12, n_layer=2, n_head=2, d_model=16, dropout=0.0
)
SMALL_BENGIO = BengioConfig(
    vocab_size=50, context=3, d_embedding=4, d_hidden=8, dropout=0.0, block=10, pad_id=0
)


@pytest.mark.parametrize("config", [SMALL_ATTENTION, SMALL_BENGIO])
def test_model_contract_logits_and_loss(config):
    """forward(idx, targets) -> logits (B, T, V) and a scalar loss; no loss without targets."""
    torch.manual_seed(0)
    model = build_model(config)
    idx = torch.randint(1, 50, (3, 10))
    logits, loss = model(idx, idx)
    assert logits.shape == (3, 10, 50)
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert model(idx)[1] is None
    assert model.context_size == config.context


@pytest.mark.parametrize("config", [SMALL_ATTENTION, SMALL_BENGIO])
def test_model_ignores_masked_targets(config):
    """Targets of -1 do not count in the loss."""
    torch.manual_seed(0)
    model = build_model(config).eval()
    idx = torch.randint(1, 50, (2, 8))
    targets = idx.clone()
    targets[:, :4] = -1
    logits, loss = model(idx, targets)
    expected = torch.nn.functional.cross_entropy(logits[:, 4:].flatten(0, 1), idx[:, 4:].flatten())
    assert torch.allclose(loss, expected, atol=1e-6)


@pytest.mark.parametrize("config", [SMALL_ATTENTION, SMALL_BENGIO])
def test_model_is_causal(config):
    """Logits at a position never depend on later tokens."""
    torch.manual_seed(0)
    model = build_model(config).eval()
    idx = torch.randint(1, 50, (1, 10))
    changed = idx.clone()
    changed[0, 6:] = (changed[0, 6:] + 7) % 49 + 1
    with torch.no_grad():
        diff = (model(idx)[0][0, :6] - model(changed)[0][0, :6]).abs().max().item()
    assert diff <= 1e-6, diff


def test_attention_lm_implementations_share_weights():
    """Switching the attention core keeps the same logits: loops, matrix, fused."""
    torch.manual_seed(0)
    model = AttentionLM(SMALL_ATTENTION).eval()
    idx = torch.randint(0, 50, (2, 7))
    outputs = {}
    for name in ("loops", "matrix", "fused"):
        model.set_attention(name)
        with torch.no_grad():
            outputs[name] = model(idx)[0]
    for name in ("matrix", "fused"):
        diff = (outputs[name] - outputs["loops"]).abs().max().item()
        assert diff <= 1e-5, f"{name} vs loops: {diff}"


def test_attention_lm_returns_weights_of_every_layer():
    model = AttentionLM(SMALL_ATTENTION).eval()
    _, weights = model.hidden_states(torch.randint(0, 50, (1, 5)), return_weights=True)
    assert len(weights) == 2 and weights[0].shape == (1, 2, 5, 5)


def test_attention_lm_rejects_context_overflow():
    model = AttentionLM(SMALL_ATTENTION)
    with pytest.raises(ValueError, match="context has 13 tokens, model accepts at most 12"):
        model(torch.zeros(1, 13, dtype=torch.long))


def test_attention_lm_output_tied_to_embedding():
    model = AttentionLM(SMALL_ATTENTION)
    assert model.head.weight is model.token_embedding.weight


def test_bengio_pads_document_starts():
    """Windows reaching before the stream or before an end-of-text token see only padding."""
    model = BengioLM(SMALL_BENGIO)
    idx = torch.tensor([[5, 6, 7, 0, 8, 9]])
    windows = model.windows(idx)[0].tolist()
    assert windows == [[0, 0, 5], [0, 5, 6], [5, 6, 7], [0, 0, 0], [0, 0, 8], [0, 8, 9]]


def test_bengio_direct_connections_optional():
    with_direct = BengioLM(SMALL_BENGIO)
    without = BengioLM(BengioConfig(**{**SMALL_BENGIO.__dict__, "direct": False}))
    assert without.direct is None
    assert parameter_count(with_direct) - parameter_count(without) == 3 * 4 * 50


def test_presets_match_the_reference_sizes():
    """base is REFERENCE.md's 13.9 M model; seed is one layer and one head at Bengio's context."""
    base = build_model(preset("attention", "base", vocab_size=8192))
    assert 13.5e6 < parameter_count(base) < 14.3e6
    seed = preset("attention", "seed")
    assert (seed.n_layer, seed.n_head) == (1, 1)
    assert seed.context == preset("bengio", "base").context
    bengio = build_model(preset("bengio", "base", vocab_size=8192))
    assert 18.5e6 < parameter_count(bengio) < 19.3e6


def test_preset_errors_name_what_is_allowed():
    with pytest.raises(ValueError, match="not one of"):
        preset("attention", "huge")
    with pytest.raises(ValueError, match="not one of"):
        preset("rnn", "base")


@pytest.mark.parametrize("prompt", [1, 5, 16])
def test_attention_lm_decode_with_cache_matches_full_windows(prompt):
    """decode: a prompt at once, then one token a call with the cached keys and values, gives
    the logits of the full forward pass at every position, up to the context."""
    torch.manual_seed(0)
    model = AttentionLM(AttentionConfig(context=16, n_layer=2, n_head=2, d_model=32)).eval()
    ids = torch.randint(0, 8192, (2, 16))
    with torch.no_grad():
        full, _ = model(ids)
        keys, values = model.empty_cache(batch=2)
        logits, keys, values = model.decode(ids[:, :prompt], keys, values)
        assert torch.allclose(logits, full[:, prompt - 1], atol=1e-5)
        for t in range(prompt, 16):
            logits, keys, values = model.decode(ids[:, t : t + 1], keys, values)
            assert keys.shape == (2, 2, 2, t + 1, 16)
            assert torch.allclose(logits, full[:, t], atol=1e-5), t
