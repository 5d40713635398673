"""Attention LM and Bengio LM: the shared contract, presets, padding and causality."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

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


def test_attention_lm_decode_pads_caches_of_different_lengths_into_one_batch():
    """Rows whose caches differ in length share a decode call: the shorter caches padded in
    front (attention_mask 0), each row at its own positions, give each row its solo logits and
    the solo keys and values after the padding."""
    torch.manual_seed(0)
    model = AttentionLM(AttentionConfig(context=16, n_layer=2, n_head=2, d_model=32)).eval()
    lengths = [9, 3, 1]
    rows = [torch.randint(0, 8192, (1, n + 2)) for n in lengths]
    with torch.no_grad():
        solo = []
        for ids, n in zip(rows, lengths, strict=True):
            keys, values = model.empty_cache()
            _, keys, values = model.decode(ids[:, :n], keys, values)
            solo.append((keys, values, *model.decode(ids[:, n : n + 2], keys, values)))
        past = max(lengths)
        pad = [past - n for n in lengths]
        keys = torch.cat(
            [F.pad(k, (0, 0, p, 0)) for (k, _, *_), p in zip(solo, pad, strict=True)], dim=1
        )
        values = torch.cat(
            [F.pad(v, (0, 0, p, 0)) for (_, v, *_), p in zip(solo, pad, strict=True)], dim=1
        )
        mask = torch.tensor([[0] * p + [1] * (past - p + 2) for p in pad])
        positions = torch.tensor([[n, n + 1] for n in lengths])
        ids = torch.cat([r[:, n : n + 2] for r, n in zip(rows, lengths, strict=True)])
        logits, present_keys, present_values = model.decode(ids, keys, values, positions, mask)
    for row, (p, (_, _, logits_1, keys_1, values_1)) in enumerate(zip(pad, solo, strict=True)):
        assert torch.allclose(logits[row], logits_1[0], atol=1e-5), row
        assert torch.allclose(present_keys[:, row, :, p:], keys_1[:, 0], atol=1e-6)
        assert torch.allclose(present_values[:, row, :, p:], values_1[:, 0], atol=1e-6)
