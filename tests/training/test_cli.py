"""The command line: clear errors, evaluation to JSON."""

from __future__ import annotations

import json

import pytest

from training import corpus
from training.__main__ import main
from training.train import TrainConfig, train


def test_cli_missing_corpus_is_a_message_not_a_traceback(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(corpus.CORPUS_ENV, raising=False)
    code = main(["prepare", "--corpus", str(tmp_path / "absent"), "--data", str(tmp_path / "d")])
    err = capsys.readouterr().err
    assert code == 2
    assert "luxedo/dataset-machado-de-assis" in err and "Traceback" not in err


def test_cli_bad_override_is_rejected(prepared, tmp_path):
    with pytest.raises(SystemExit, match="FIELD=VALUE"):
        main(["train", "--data", str(prepared), "--set", "dropout", "--out", str(tmp_path)])


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["train", "--save-interval", "0"], "--save-interval: must be at least 1, got 0"),
        (["train", "--eval-interval", "-5"], "--eval-interval: must be at least 1, got -5"),
        (["train", "--batch-size", "8.5"], "--batch-size: expected a whole number, got '8.5'"),
        (["sweep", "--parallel", "0"], "--parallel: must be at least 1, got 0"),
    ],
)
def test_cli_counts_below_one_are_usage_errors(args, said, capsys):
    """A step count or interval below 1 would train nothing or divide by zero mid-run: argparse
    refuses it before anything starts."""
    with pytest.raises(SystemExit) as ended:
        main(args)
    assert ended.value.code == 2 and said in capsys.readouterr().err


def test_cli_evaluate_writes_bpc_json(prepared, tmp_path, capsys):
    """evaluate scores the whole split and reports perplexity and bits per character."""
    run = tmp_path / "run"
    train(
        TrainConfig(
            overrides={"d_model": 16, "n_layer": 1, "n_head": 1, "context": 16},
            out=run,
            data=prepared,
            batch_size=4,
            max_steps=10,
            eval_interval=10,
            device="cpu",
            progress=False,
        )
    )
    out = tmp_path / "eval.json"
    assert (
        main(
            [
                "evaluate",
                str(run / "best"),
                "--split",
                "test",
                "--data",
                str(prepared),
                "--device",
                "cpu",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    result = json.loads(out.read_text())
    meta = json.loads((prepared / "meta.json").read_text())
    assert result["tokens"] == meta["splits"]["test"]["tokens"] - 1
    assert result["characters"] == meta["splits"]["test"]["characters"]
    assert 0 < result["bits_per_character"] < 10 and result["split"] == "test"
    fp16 = tmp_path / "eval16.json"
    main(
        [
            "evaluate",
            str(run / "best"),
            "--data",
            str(prepared),
            "--device",
            "cpu",
            "--storage",
            "float16",
            "--json",
            str(fp16),
        ]
    )
    half = json.loads(fp16.read_text())
    assert half["storage"] == "float16"
    assert abs(half["bits_per_character"] - result["bits_per_character"]) < 0.01
