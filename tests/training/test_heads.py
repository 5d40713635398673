"""``python -m training heads``: what each attention head of the shipped models looks at."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from runtime.loader import LoadedModel, open_model
from training.__main__ import main
from training.context import weights_sha256
from training.heads import EXAMPLE, head_stats, measure, measure_model, uniform
from training.report import load_heads
from training.report_text import render
from training.tokenizer import file_sha256

MODELS = Path(__file__).resolve().parents[2] / "models"


def one_head(weights: np.ndarray) -> np.ndarray:
    """(T, T) -> (1, 1, 1, T, T), the graph's layout for one window of a one-head model."""
    return weights[None, None, None]


def test_a_previous_token_head():
    length = 8
    weights = np.zeros((length, length))
    weights[0, 0] = 1.0
    weights[np.arange(1, length), np.arange(length - 1)] = 1.0
    stats = head_stats(one_head(weights))
    assert stats["distance"][0, 0] == pytest.approx(1.0)
    assert stats["entropy_bits"][0, 0] == pytest.approx(0.0)
    assert stats["previous"][0, 0] == pytest.approx(1.0)
    assert stats["self"][0, 0] == stats["first"][0, 0] == 0.0  # queries 4..7 only


def test_an_even_head_is_the_uniform_reference():
    length = 16
    weights = np.tril(np.ones((length, length)))
    weights /= weights.sum(-1, keepdims=True)
    stats = head_stats(one_head(weights))
    even = uniform(length)
    assert stats["distance"][0, 0] == pytest.approx(even["distance"])
    assert stats["entropy_bits"][0, 0] == pytest.approx(even["entropy_bits"])
    queries = np.arange(length // 2, length)
    assert stats["self"][0, 0] == pytest.approx(np.mean(1 / (queries + 1)))


def test_statistics_add_up_over_windows():
    """Each statistic is a sum over the batch (measure_model divides by the windows)."""
    rng = np.random.default_rng(0)
    weights = np.tril(rng.random((3, 2, 4, 8, 8)))
    weights /= weights.sum(-1, keepdims=True)
    together = head_stats(weights)
    apart = [head_stats(weights[i : i + 1]) for i in range(3)]
    for name, value in together.items():
        assert value.shape == (2, 4)
        np.testing.assert_allclose(value, sum(a[name] for a in apart))


@pytest.fixture(scope="module")
def seed() -> LoadedModel:
    return open_model(MODELS / "attention-seed")


def test_measured_heads_are_the_mean_of_each_windows_maps(seed):
    """The batched graph call gives what each window alone gives, averaged."""
    tokens = np.random.default_rng(1).integers(1, 8192, 400)
    result = measure_model(seed, tokens, windows=5, batch=2)
    n = seed.context
    starts = np.linspace(0, len(tokens) - n, 5).astype(np.int64)
    alone = [head_stats(seed.attention_weights(tokens[None, s : s + n])) for s in starts]
    for name in ("distance", "entropy_bits", "self", "previous", "first"):
        expected = sum(a[name] for a in alone) / 5
        np.testing.assert_allclose(result[name], expected, atol=1e-4)
    assert result["layers"] == result["heads"] == 1 and result["windows"] == 5
    assert 0 < result["entropy_bits"][0][0] <= result["uniform"]["entropy_bits"] + 1e-9


@pytest.fixture(scope="module")
def shipped_data(tmp_path_factory) -> Path:
    """A data folder with the shipped tokenizer and a random test stream (no corpus needed)."""
    folder = tmp_path_factory.mktemp("data")
    meta = {"tokenizer_sha256": file_sha256(MODELS / "tokenizer.json"), "splits": {}}
    (folder / "meta.json").write_text(json.dumps(meta))
    shutil.copyfile(MODELS / "tokenizer.json", folder / "tokenizer.json")
    for split in ("train", "validation", "test"):  # prepared: nothing is read from a corpus
        np.save(folder / f"{split}.npy", np.random.default_rng(2).integers(1, 8192, 3000))
    return folder


def test_measure_reads_every_attention_model_and_one_sentence(shipped_data):
    result = measure(MODELS, shipped_data, "test", windows=3)
    assert list(result["models"]) == ["attention", "attention-seed"]  # bengio has no attention
    full = result["models"]["attention"]
    assert (full["layers"], full["heads"], full["context"]) == (6, 6, 256)
    assert np.asarray(full["distance"]).shape == (6, 6)
    assert full["weights_sha256"] == weights_sha256(MODELS / "attention")
    example = full["example"]
    assert example["tokens"][0] == "<|endoftext|>"
    assert "".join(example["tokens"][1:]) == EXAMPLE
    maps = np.asarray(example["maps"])
    length = len(example["tokens"])
    assert maps.shape == (6, 6, length, length)
    np.testing.assert_allclose(maps.sum(-1), 1.0, atol=0.01)
    assert np.triu(maps, 1).max() == 0.0  # causal
    seed = result["models"]["attention-seed"]
    assert len(seed["example"]["tokens"]) == seed["context"]  # the sentence's last tokens


@pytest.mark.slow
def test_cli_writes_the_result_and_refuses_another_tokenizer(shipped_data, prepared, tmp_path):
    out = tmp_path / "heads.json"
    code = main(["heads", "--data", str(shipped_data), "--windows", "2", "--json", str(out)])
    assert code == 0
    assert set(json.loads(out.read_text())["models"]) == {"attention", "attention-seed"}
    with pytest.raises(SystemExit, match=r"uses tokenizer \w+, but .* was prepared with"):
        main(["heads", "--data", str(prepared), "--windows", "2"])


@pytest.mark.slow
def test_report_draws_the_maps_or_says_they_are_stale(shipped_data, tmp_path):
    result = measure(MODELS, shipped_data, "test", windows=2)
    models_dir = tmp_path / "models"
    for name in result["models"]:
        (models_dir / name).mkdir(parents=True)
        (models_dir / name / "weights.bin").write_bytes(
            (MODELS / name / "weights.bin").read_bytes()
        )
    bench = tmp_path / "heads-test.json"
    bench.write_text(json.dumps(result))
    heads = load_heads(bench, models_dir)
    assert heads["stale"] == []
    for name in result["models"]:
        assert (models_dir / f"heads-{name}.png").read_bytes()[:4] == b"\x89PNG"
    report = {"rows": [], "samples": {}, "curves": False, "cpu": "test CPU", "heads": heads}
    text = render(report)
    assert "## What the attention heads look at" in text
    assert "![attention maps of attention](heads-attention.png)" in text
    assert "| layer | head 0 | head 1 | head 2 | head 3 | head 4 | head 5 |" in text
    assert f"--windows 2 --json {bench}" in text
    (models_dir / "attention" / "weights.bin").write_bytes(b"retrained")
    heads = load_heads(bench, models_dir)
    assert heads["stale"] == ["attention"]
    assert not (models_dir / "heads-attention.png").exists()
    text = render({**report, "heads": heads})
    assert "Measured on weights since replaced (attention): rerun" in text
    assert "heads-attention-seed.png" not in text
    assert load_heads(tmp_path / "none.json", models_dir) is None
