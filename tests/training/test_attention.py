"""The three self-attention cores: same numbers, causal, proper softmax rows."""

from __future__ import annotations

import pytest
import torch

from training.attention import IMPLEMENTATIONS, CausalSelfAttention

SHAPES = [(1, 1, 16, 1), (2, 1, 16, 1), (3, 7, 24, 3), (2, 5, 32, 4), (1, 12, 8, 8)]


def _layer(d_model: int, n_head: int, seed: int = 0) -> CausalSelfAttention:
    torch.manual_seed(seed)
    return CausalSelfAttention(d_model, n_head, dropout=0.0).eval()


@pytest.mark.parametrize(("batch", "steps", "d_model", "n_head"), SHAPES)
def test_attention_implementations_agree(batch, steps, d_model, n_head):
    """loops, matrix and fused give the same outputs and weights to 1e-5 in fp32."""
    layer = _layer(d_model, n_head)
    x = torch.randn(batch, steps, d_model)
    results = {}
    for name in IMPLEMENTATIONS:
        layer.implementation = name
        with torch.no_grad():
            results[name] = layer(x, return_weights=True)
    ref_out, ref_weights = results["loops"]
    assert ref_weights.shape == (batch, n_head, steps, steps)
    for name in ("matrix", "fused"):
        out, weights = results[name]
        diff = (out - ref_out).abs().max().item()
        assert diff <= 1e-5, f"{name} output differs from loops by {diff}"
        wdiff = (weights - ref_weights).abs().max().item()
        assert wdiff <= 1e-5, f"{name} weights differ from loops by {wdiff}"


@pytest.mark.parametrize("name", IMPLEMENTATIONS)
def test_attention_is_causal(name):
    """Changing a later token never changes an earlier output."""
    layer = _layer(16, 2)
    layer.implementation = name
    x = torch.randn(2, 9, 16)
    changed = x.clone()
    changed[:, 5:] = torch.randn(2, 4, 16)
    with torch.no_grad():
        before, _ = layer(x)
        after, _ = layer(changed)
    diff = (before[:, :5] - after[:, :5]).abs().max().item()
    assert diff <= 1e-6, f"positions before 5 moved by {diff}"
    assert (before[:, 5:] - after[:, 5:]).abs().max().item() > 1e-3


@pytest.mark.parametrize("name", IMPLEMENTATIONS)
def test_attention_weights_rows_sum_to_one_and_never_look_ahead(name):
    """Each query's weights are a distribution over the keys at or before it."""
    layer = _layer(24, 3)
    layer.implementation = name
    with torch.no_grad():
        _, weights = layer(torch.randn(2, 11, 24), return_weights=True)
    sums = weights.sum(-1)
    assert torch.allclose(sums, torch.ones_like(sums), atol=1e-6), sums
    future = torch.ones(11, 11, dtype=torch.bool).triu(1)
    assert weights[..., future].abs().max().item() == 0.0


def test_attention_weights_not_returned_unless_asked():
    layer = _layer(8, 2)
    _, weights = layer(torch.randn(1, 3, 8))
    assert weights is None


def test_attention_rejects_width_not_divisible_by_heads():
    with pytest.raises(ValueError, match="not divisible"):
        CausalSelfAttention(10, 3)


def test_attention_rejects_unknown_implementation():
    layer = _layer(8, 2)
    layer.implementation = "magic"
    with pytest.raises(ValueError, match="not one of"):
        layer(torch.randn(1, 2, 8))


def test_attention_gradients_agree_between_matrix_and_fused():
    """Training through either core gives the same gradients."""
    grads = {}
    for name in ("matrix", "fused"):
        layer = _layer(16, 4)
        layer.implementation = name
        layer(torch.randn(2, 6, 16, generator=torch.Generator().manual_seed(1)))[0].sum().backward()
        grads[name] = layer.wq.weight.grad
    assert torch.allclose(grads["matrix"], grads["fused"], atol=1e-5)
