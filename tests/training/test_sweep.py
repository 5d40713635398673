"""The validation sweep: its plan, how it combines winners, and one real run of it."""

from __future__ import annotations

import json
import math

import pytest

from training.__main__ import main
from training.sweep import BASE, combination, format_table, plan, trial_name

pytestmark = pytest.mark.slow  # real weights on a real port, training runs, or a browser

FACTORS = {"context": [4, 12], "d_hidden": [512, 2048], "direct": [False], "dropout": [0.1]}


def test_plan_is_base_then_one_trial_per_value():
    trials = plan(FACTORS)
    assert [t.name for t in trials] == [
        BASE,
        "context=4",
        "context=12",
        "d_hidden=512",
        "d_hidden=2048",
        "direct=False",
        "dropout=0.1",
    ]
    assert trials[0].overrides == {}
    assert trials[5].overrides == {"direct": False}


def test_combination_takes_each_factor_winner_that_beat_base():
    scores = {
        BASE: 4.70,
        "context=4": 4.72,
        "context=12": 4.65,  # beats base
        "d_hidden=512": 4.80,
        "d_hidden=2048": 4.60,  # beats base, and is the better of the two
        "direct=False": 4.90,
        "dropout=0.1": 4.71,
    }
    trial = combination(FACTORS, scores)
    assert trial is not None
    assert trial.overrides == {"context": 12, "d_hidden": 2048}
    assert trial.name == trial_name({"context": 12, "d_hidden": 2048})


@pytest.mark.parametrize(
    "scores",
    [
        {BASE: 4.0, "context=4": 4.1, "d_hidden=512": 4.2},  # base wins everywhere
        {BASE: 4.0, "context=4": 3.9, "d_hidden=512": 4.2},  # one factor: already a trial
        {BASE: math.inf, "context=4": math.inf},  # everything failed
    ],
)
def test_no_combination_when_it_would_repeat_a_trial(scores):
    assert combination(FACTORS, scores) is None


def test_table_lists_failures_and_marks_the_choice():
    report = {
        "chosen": "context=4",
        "trials": {
            BASE: {"best_val_loss": 4.7, "parameters": 10, "steps": 5, "tokens_seen": 80},
            "context=4": {"best_val_loss": 4.6, "parameters": 9, "steps": 5, "tokens_seen": 80},
            "context=12": {"error": "exit code 1, see context=12.log"},
        },
    }
    lines = format_table(report).splitlines()
    assert "context=4 (chosen)" in lines[2] and "4.6000" in lines[2]
    assert "base" in lines[3]
    assert "failed: exit code 1" in lines[4]


def test_sweep_refuses_a_time_budget(prepared, tmp_path):
    with pytest.raises(SystemExit, match="step budget"):
        main(["sweep", "--data", str(prepared), "--out", str(tmp_path), "--", "--time-budget", "5"])


def test_sweep_runs_trials_in_parallel_and_evaluates_the_chosen_one(prepared, tmp_path):
    out = tmp_path / "sweep"
    code = main(
        [
            "sweep",
            "--model",
            "bengio",
            "--preset",
            "tiny",
            "--vary",
            "context=2",
            "--parallel",
            "2",
            "--data",
            str(prepared),
            "--out",
            str(out),
            "--",
            "--batch-size",
            "4",
            "--max-steps",
            "8",
            "--eval-interval",
            "8",
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    report = json.loads((out / "sweep.json").read_text())
    assert set(report["trials"]) == {BASE, "context=2"}
    losses = {name: r["best_val_loss"] for name, r in report["trials"].items()}
    assert report["chosen"] == min(losses, key=losses.get)
    for result in report["trials"].values():
        assert result["steps"] == 8  # the same step budget for every trial
    chosen = out / report["chosen"]
    assert (chosen / "best" / "config.json").is_file()
    other = next(name for name in losses if name != report["chosen"])
    assert not (out / other / "best").exists()  # only the chosen weights are kept
    splits = [(e["split"], e["storage"]) for e in report["evaluations"]]
    assert splits == [("validation", "float32"), ("test", "float32"), ("test", "float16")]
    assert (chosen / "eval-test-float16.json").is_file()


def test_sweep_resume_keeps_finished_trials_and_continues_cut_ones(prepared, tmp_path, capsys):
    """A sweep cut short goes on: a trial killed half-way resumes from its last checkpoint, a
    finished one is not trained again, and other factors or train arguments are refused."""
    out = tmp_path / "sweep"
    model = ["--model", "bengio", "--preset", "tiny"]
    train_args = ["--batch-size", "4", "--max-steps", "8", "--eval-interval", "4", "--device"]
    train_args += ["cpu"]
    # The base trial as the sweep runs it, cut off after its checkpoint at step 4.
    cut = ["train", *model, "--out", str(out / BASE), "--no-progress", *train_args]
    assert main([*cut, "--data", str(prepared), "--stop-at", "4"]) == 0
    sweep = ["sweep", *model, "--out", str(out), "--no-eval", "--data", str(prepared)]
    sweep += ["--vary", "context=2", "--resume"]
    assert main([*sweep, "--", *train_args]) == 0
    assert f"resumed {out / BASE} at step 4" in (out / f"{BASE}.log").read_text()
    assert "resumed" not in (out / "context=2.log").read_text()  # nothing to resume: from 0
    report = json.loads((out / "sweep.json").read_text())
    assert {name: r["steps"] for name, r in report["trials"].items()} == {BASE: 8, "context=2": 8}
    steps = [json.loads(line)["step"] for line in (out / BASE / "metrics.jsonl").open()]
    assert steps == [4, 8]

    capsys.readouterr()
    assert main([*sweep, "--", *train_args]) == 0  # all finished: nothing is trained again
    printed = capsys.readouterr().out
    assert "sweep: start" not in printed and printed.count("finished before") == 2
    again = json.loads((out / "sweep.json").read_text())
    assert again["trials"] == report["trials"] and again["chosen"] == report["chosen"]

    with pytest.raises(SystemExit, match="another factors"):
        main([*sweep[:-3], "--vary", "context=3", "--resume", "--", *train_args])
    with pytest.raises(SystemExit, match="another train_args"):
        main([*sweep, "--", *train_args[:3], "9", *train_args[4:]])
    # How often trials save changes nothing they learn: the sweep goes on with another interval.
    for save in (["--save-interval", "2"], ["--save-interval=2"]):
        assert main([*sweep, "--", *train_args, *save]) == 0
