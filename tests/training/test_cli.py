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
        (["train", "--lr", "-1"], "--lr: must be more than 0, got -1"),
        (["train", "--lr", "nan"], "--lr: must be more than 0, got nan"),
        (["train", "--beta2", "1"], "--beta2: must be at least 0 and below 1, got 1"),
        (["train", "--min-lr-ratio", "1.5"], "--min-lr-ratio: must be at least 0 and at most 1"),
        (["train", "--warmup-steps", "-1"], "--warmup-steps: must be at least 0, got -1"),
        (["train", "--grad-clip", "x"], "--grad-clip: expected a number, got 'x'"),
        (["evaluate", "/nonexistent/run/best"], "/nonexistent/run/best does not exist"),
        (["export", "tests", "--out", "x"], "tests has no config.json: a checkpoint is a run's"),
        (["checksums", "tests"], "tests has no card.json: a model folder is what `export` writes"),
        (["heads", "--windows", "0"], "--windows: must be at least 1, got 0"),
        (["context", "--threads", "0"], "--threads: must be at least 1, got 0"),
        (["prepare", "--vocab-size", "10"], "--vocab-size: must be at least 257 (the 256 bytes"),
    ],
)
def test_cli_values_out_of_range_are_usage_errors(args, said, capsys):
    """A step count or interval below 1 would train nothing or divide by zero mid-run, a
    learning rate of 0 or less or a beta2 of 1 would train nothing or diverge, and a folder that
    is no checkpoint would end in a traceback: argparse refuses them before anything starts."""
    with pytest.raises(SystemExit) as ended:
        main(args)
    assert ended.value.code == 2 and said in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--preset", "huge"], "attention preset 'huge' is not one of"),
        (["--set", "layers=2"], "the attention model has no field layers; its fields: vocab_size"),
        (["--set", "n_head=5"], "d_model 64 is not divisible by n_head 5"),
        (["--set", "dropout=1"], "dropout must be at least 0 and below 1, got 1"),
        (["--set", "context=0"], "context must be a whole number of at least 1, got 0"),
        (["--set", "d_model=64.0"], "d_model must be a whole number of at least 1, got 64.0"),
        (["--set", "attention=loopz"], "attention 'loopz' is not one of"),
        (["--model", "bengio", "--set", "direct=3"], "direct must be True or False, got 3"),
        (["--model", "bengio", "--set", "pad_id=-1"], "pad_id must be a token id below"),
    ],
)
def test_cli_model_config_errors_stop_before_anything_starts(args, said, tmp_path):
    """A model config that cannot train (context 0 trained to a NaN loss) is refused with a
    message, before the data is prepared or a run folder made."""
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as ended:
        main(["train", *args, "--data", str(tmp_path / "no-data"), "--out", str(out)])
    assert str(ended.value.code).startswith("error: ") and said in str(ended.value.code)
    assert not out.exists() and not (tmp_path / "no-data").exists()


def test_cli_sweep_refuses_a_value_no_trial_could_train(tmp_path):
    """Every --vary value is checked as a config before the first trial trains."""
    out = tmp_path / "sweep"
    with pytest.raises(SystemExit) as ended:
        main(["sweep", "--vary", "context=4,0", "--out", str(out), "--data", str(tmp_path / "d")])
    assert "context must be a whole number of at least 1, got 0" in str(ended.value.code)
    assert not out.exists()


@pytest.mark.slow
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
