"""``python -m training context``: loss against the number of tokens a prediction reads."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from runtime.loader import LoadedModel, open_model
from training.__main__ import main
from training.context import (
    context_curve,
    format_table,
    full_context,
    plot,
    plot_bins,
    splice,
    summary,
    table_ranges,
    token_nll,
    weights_sha256,
)
from training.report import load_context, render

pytestmark = pytest.mark.slow  # real weights on a real port, training runs, or a browser

MODELS = Path(__file__).resolve().parents[2] / "models"
TEXT = (
    "Não tive filhos, não transmiti a nenhuma criatura o legado da nossa miséria. Capitu olhou "
    "para mim, e eu para ela; a vida é uma ópera e uma grande ópera, disse o tenor italiano."
)


@pytest.fixture(scope="module")
def models() -> dict[str, LoadedModel]:
    return {name: open_model(MODELS / name) for name in ("attention", "attention-seed", "bengio")}


def one_at_a_time(model: LoadedModel, tokens: np.ndarray, length: int, stride: int) -> list[float]:
    """Mean NLL per context length, each prediction run alone on exactly its prefix."""
    means = []
    for reads in range(1, length + 1):
        nll = []
        for start in range(0, len(tokens) - length, stride):
            logits = model.next_logits(list(tokens[start : start + reads])).astype(np.float64)
            target = tokens[start + reads]
            nll.append(np.log(np.exp(logits - logits.max()).sum()) + logits.max() - logits[target])
        means.append(float(np.mean(nll)))
    return means


@pytest.mark.parametrize(
    ("name", "length", "coverage"),
    [("attention-seed", None, 4), ("bengio", None, 2), ("attention", 12, 3)],
)
def test_each_length_is_the_loss_of_predictions_reading_exactly_that_many_tokens(
    models, name, length, coverage
):
    """length None: the model's whole context."""
    model = models[name]
    length = length or model.context
    tokens = np.asarray(model.tokenizer.encode(TEXT).ids, dtype=np.int64)
    curve = context_curve(model, tokens, length=length, coverage=coverage, batch_tokens=40)
    stride = length // coverage
    windows = len(range(0, len(tokens) - length, stride))
    assert curve["count"] == [windows] * length
    assert curve["windows"] == [{"length": length, "stride": stride, "count": windows}]
    expected = one_at_a_time(model, tokens, length, stride)
    np.testing.assert_allclose(curve["mean_nats"], expected, rtol=1e-4, atol=1e-4)
    assert all(s > 0 for s in curve["std_nats"])


def test_bad_lengths_and_coverage_are_refused(models):
    seed = models["attention-seed"]
    tokens = np.arange(40)
    n = seed.context
    with pytest.raises(ValueError, match=f"exceeds attention-seed's context {n}"):
        context_curve(seed, tokens, length=n + 1)
    with pytest.raises(ValueError, match="coverage must be at least 1"):
        context_curve(seed, tokens, coverage=0)
    with pytest.raises(ValueError, match="fewer than a window"):
        context_curve(seed, tokens[:n])


def test_token_nll_is_the_cross_entropy():
    logits = np.log(np.asarray([[[0.5, 0.25, 0.25], [0.1, 0.1, 0.8]]], dtype=np.float32))
    np.testing.assert_allclose(
        token_nll(logits, np.asarray([[1, 2]])), [[math.log(4), -math.log(0.8)]], rtol=1e-6
    )


def curve(length: int, nats: list[float], count: list[int], std: float = 0.0) -> dict:
    return {
        "length": length,
        "windows": [{"length": length, "stride": 1, "count": count[0]}],
        "seconds": 1.0,
        "count": count,
        "mean_nats": nats,
        "std_nats": [std] * length,
    }


def test_splice_takes_the_short_lengths_from_the_dense_windows():
    short = curve(2, [3.0, 2.0], [100, 100])
    long = curve(4, [9.0, 9.0, 1.5, 1.0], [10] * 4)
    spliced = splice(short, long)
    assert spliced["mean_nats"] == [3.0, 2.0, 1.5, 1.0]
    assert spliced["count"] == [100, 100, 10, 10]
    assert spliced["length"] == 4 and spliced["seconds"] == 2.0
    assert len(spliced["windows"]) == 2


def result_of(models: dict[str, dict]) -> dict:
    # 100 tokens for 200 characters: a token of ln 2 * 2 nats is exactly 1 bit per character.
    return {
        "split": "test",
        "tokens": 100,
        "characters": 200,
        "coverage": 4,
        "cpu": "x86_64, 2 ONNX Runtime threads",
        "file": "benchmarks/context-test.json",
        "stale": [],
        "models": models,
    }


def test_summary_weighs_every_target_alike_and_converts_to_bits_per_character():
    nats = [2 * math.log(2) * (1 + 1 / c) for c in range(1, 257)]  # BPC 1 + 1/c
    counts = [400] * 8 + [10] * 248
    result = result_of({"long": curve(256, nats, counts, std=math.log(2))})
    at = summary(result)["long"]
    assert list(at) == table_ranges(256)
    assert at[(1, 1)][0] == pytest.approx(2.0) and at[(8, 8)][0] == pytest.approx(1.125)
    assert at[(1, 1)][1] == pytest.approx(2 * 0.5 / 20)  # 2 s.e.: 2 * std / sqrt(400)
    lengths = np.arange(129, 257)
    assert at[(129, 256)][0] == pytest.approx(np.mean(1 + 1 / lengths))
    assert full_context(result, "long")[0] == pytest.approx(np.mean(1 + 1 / lengths))


def test_the_table_leaves_lengths_past_a_models_context_empty():
    result = result_of(
        {
            "attention": curve(256, [2 * math.log(2)] * 256, [50] * 256),
            "bengio": curve(8, [3 * math.log(2)] * 8, [50] * 8),
        }
    )
    result["models"]["bengio"]["card_bpc"] = 1.5
    table = format_table(result)
    assert table.splitlines()[0] == (
        "| model | 1 | 2 | 4 | 8 | 9–32 | 33–128 | 129–256 | card's test BPC |"
    )
    assert "| `attention` | 1.000 ± 0.000 |" in table and table.count("1.000 ± 0.000") == 7
    bengio = "| `bengio` |" + " 1.500 ± 0.000 |" * 4 + "  |  |  | 1.500 |"
    assert bengio in table


@pytest.mark.parametrize("longest", [1, 4, 8, 9, 16, 32, 100, 128, 256, 512, 1024])
def test_table_ranges_cover_every_length_past_eight_once_ending_in_the_upper_half(longest):
    ranges = table_ranges(longest)
    assert ranges[: min(4, len(ranges))] == [(c, c) for c in (1, 2, 4, 8) if c <= longest]
    past = [c for first, last in ranges[4:] for c in range(first, last + 1)]
    assert past == list(range(9, longest + 1))
    if longest >= 18:  # the last range is what the evaluation command scores
        assert ranges[-1] == (longest // 2 + 1, longest)
    assert table_ranges(256)[4:] == [(9, 32), (33, 128), (129, 256)]


def test_plot_bins_cover_every_length_past_eight_once():
    for length in (9, 10, 100, 256):
        bins = plot_bins(length)
        covered = [c for first, last in bins for c in range(first, last + 1)]
        assert covered == list(range(9, length + 1))
    assert plot_bins(8) == []
    assert plot_bins(256)[:3] == [(9, 12), (13, 16), (17, 24)]


def test_plot_writes_a_png(tmp_path):
    result = result_of(
        {
            "attention": curve(256, [2.0] * 256, [50] * 256, std=1.0),
            "bengio": curve(8, [3.0] * 8, [50] * 8, std=1.0),
        }
    )
    plot(result, tmp_path / "context.png")
    assert (tmp_path / "context.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def report_with(context: dict) -> str:
    row = {
        "name": "attention",
        "kind": "attention",
        "parameters": 13_900_000,
        "context": 256,
        "tokens_seen": 135_000_000,
        "training_seconds": 221.0,
        "hardware": "GPU",
        "latency": {"median_ms": 5.0, "p90_ms": 6.0},
        "validation": {},
        "test": {"bits_per_character": 1.636},
        "test_float16": {},
    }
    rows = [
        row,
        {**row, "name": "attention-seed", "context": 8, "tokens_seen": 33_000_000},
        {
            **row,
            "name": "bengio",
            "kind": "bengio",
            "context": 8,
            "tokens_seen": 36_000_000,
            "test": {"bits_per_character": 1.820},
        },
    ]
    return render(
        {
            "rows": rows,
            "context": context,
            "samples": {},
            "cpu": "x86_64, 2 ONNX Runtime threads",
            "curves": False,
        }
    )


def test_the_report_splits_the_lead_into_equal_context_and_longer_context():
    bits = 2 * math.log(2)  # nats of 1 BPC here
    attention = [bits * 1.7] * 8 + [bits * 1.6] * 248
    context = result_of(
        {
            "attention": curve(256, attention, [100] * 256),
            "attention-seed": curve(8, [bits * 1.75] * 8, [100] * 8),
            "bengio": curve(8, [bits * 1.85] * 8, [100] * 8),
        }
    )
    text = report_with(context)
    assert "## How much context each model uses" in text
    assert "![loss against context length](context.png)" in text
    assert (
        "Reading the same 8 tokens, the attention model scores 1.700 BPC, the seed model 1.750 "
        "and the Bengio MLP 1.850" in text
    )
    assert "lead over the MLP (0.250 BPC in this measurement), 0.150 is already there" in text
    assert "0.100 comes from reading up to 256 tokens" in text
    assert "it saw 135 M training tokens against 36 M" in text
    assert "--coverage 4 --json benchmarks/context-test.json" in text


def test_a_stale_context_measurement_is_not_reported_as_current():
    bits = 2 * math.log(2)
    context = result_of({"attention": curve(256, [bits] * 256, [100] * 256)})
    context["stale"] = ["attention"]
    text = report_with(context)
    assert "Measured on weights since replaced (attention): rerun" in text
    assert "Where the lead comes from" not in text and "| `attention` | 1.000" not in text


def test_loading_the_measurement_draws_its_plot_or_removes_a_stale_one(tmp_path):
    """Current: models/context.png is drawn. Once a model is replaced: the old plot goes."""
    models_dir = tmp_path / "models"
    (models_dir / "attention").mkdir(parents=True)
    (models_dir / "attention" / "weights.bin").write_bytes(b"first weights")
    bits = 2 * math.log(2)
    context = result_of({"attention": curve(256, [bits] * 256, [100] * 256)})
    context["models"]["attention"]["weights_sha256"] = weights_sha256(models_dir / "attention")
    bench = tmp_path / "context-test.json"
    bench.write_text(json.dumps(context))
    loaded = load_context(bench, models_dir)
    assert loaded["stale"] == [] and loaded["file"] == str(bench)
    assert (models_dir / "context.png").read_bytes()[:4] == b"\x89PNG"
    (models_dir / "attention" / "weights.bin").write_bytes(b"retrained weights")
    assert load_context(bench, models_dir)["stale"] == ["attention"]
    assert not (models_dir / "context.png").exists()
    assert load_context(tmp_path / "none.json", models_dir) is None


def test_weights_hash_of_a_folder(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"abc")
    assert weights_sha256(tmp_path).startswith("ba7816bf")
    assert weights_sha256(tmp_path / "none") == ""


def test_cli_scores_the_prepared_split_and_refuses_another_tokenizer(prepared, tmp_path, capsys):
    # The shipped models were not trained on the synthetic corpus's tokenizer.
    with pytest.raises(SystemExit, match=r"uses tokenizer \w+, but .* was prepared with"):
        main(["context", "--data", str(prepared), "--models", str(MODELS), "--names", "bengio"])
    with pytest.raises(SystemExit, match="no model folder nope"):
        main(["context", "--data", str(prepared), "--models", str(MODELS), "--names", "nope"])


def test_cli_on_the_real_split(real_data, tmp_path, capsys):
    """The tokenizer prepared from the corpus is the shipped one, and the curve meets the card."""
    out = tmp_path / "context.json"
    code = main(
        [
            "context",
            "--data",
            str(real_data),
            "--names",
            "attention-seed",
            "--split",
            "validation",
            "--coverage",
            "1",
            "--json",
            str(out),
        ]
    )
    assert code == 0
    result = json.loads(out.read_text())
    seed = result["models"]["attention-seed"]
    assert seed["weights_sha256"] == weights_sha256(MODELS / "attention-seed")
    # Reading more never hurts much, and the whole window scores what the card says (± noise).
    bpc = summary(result)["attention-seed"]
    card = json.loads((MODELS / "attention-seed" / "card.json").read_text())
    n = card["context"]
    assert bpc[(1, 1)][0] > bpc[(n, n)][0]
    assert full_context(result, "attention-seed")[0] == pytest.approx(
        card["metrics"]["validation"]["bits_per_character"], abs=0.02
    )
    assert seed["card_bpc"] == card["metrics"]["validation"]["bits_per_character"]
    printed = capsys.readouterr().out
    assert "| `attention-seed` |" in printed and "card's validation BPC" in printed


def test_the_lead_is_split_at_the_mlps_own_context():
    """A Bengio model of 6 tokens is compared with the attention model reading 6."""
    bits = 2 * math.log(2)
    attention = [bits * 2.0] * 5 + [bits * 1.7] + [bits * 1.6] * 250
    context = result_of(
        {
            "attention": curve(256, attention, [100] * 256),
            "bengio": curve(6, [bits * 1.9] * 6, [100] * 6),
        }
    )
    text = report_with(context)
    assert "Reading the same 6 tokens, the attention model scores 1.700 BPC and the Bengio" in text
    assert "(0.300 BPC in this measurement), 0.200 is already there at equal context" in text
