"""Hyperparameter sweep on the validation split.

One factor at a time around a base configuration, then the best value of every factor
together: a grid over four factors would take 3**4 runs, this takes 1 + (values) + 1. Every
trial is the same ``python -m training train`` command with the same step budget and seed,
differing only in its ``--set`` overrides, so the trials see the same tokens in the same order
and their best validation losses compare. Trials run as parallel processes (one GPU holds
several small models at once). The trial with the lowest validation loss is chosen and
evaluated on validation and test; the test split plays no part in the choice.

A sweep can stop and go on (``--resume``): a finished trial leaves ``OUT/TRIAL/trial.json`` and is
not trained again, an unfinished one resumes from its last checkpoint (``train --resume``), and
the sweep refuses to go on with other factors or train arguments than it started with
(``OUT/plan.json``; how often trials save may change). So a sweep of many hours can
run across restarts of its machine.

    python -m training sweep --model bengio --preset base --parallel 9 \\
        --vary context=4,12 --vary d_hidden=512,2048 --vary direct=False \\
        --vary dropout=0.1,0.4 --out runs/sweep-bengio -- --batch-size 16 --max-steps 17500
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BASE = "base"


@dataclass
class Trial:
    name: str
    overrides: dict[str, Any] = field(default_factory=dict)


def trial_name(overrides: dict[str, Any]) -> str:
    if not overrides:
        return BASE
    return "+".join(f"{key}={value}" for key, value in overrides.items())


def plan(factors: dict[str, list[Any]]) -> list[Trial]:
    """The base trial, then one trial per alternative value of each factor."""
    trials = [Trial(BASE)]
    for key, values in factors.items():
        for value in values:
            trials.append(Trial(trial_name({key: value}), {key: value}))
    return trials


def combination(factors: dict[str, list[Any]], scores: dict[str, float]) -> Trial | None:
    """The best value of every factor together, when that is a trial not yet run.

    A factor keeps its base value unless one of its alternatives beat the base trial.
    """
    base = scores.get(BASE, math.inf)
    chosen: dict[str, Any] = {}
    for key, values in factors.items():
        best_value, best_score = None, base
        for value in values:
            score = scores.get(trial_name({key: value}), math.inf)
            if score < best_score:
                best_value, best_score = value, score
        if best_value is not None:
            chosen[key] = best_value
    if len(chosen) < 2:  # the base trial or a single-factor trial: already run
        return None
    return Trial(trial_name(chosen), chosen)


TRIAL_FILE = "trial.json"
PLAN_FILE = "plan.json"


def _command(trial: Trial, model: str, preset: str, out: Path, train_args: list[str]) -> list[str]:
    command = [sys.executable, "-m", "training", "train", "--model", model, "--preset", preset]
    for key, value in trial.overrides.items():
        command += ["--set", f"{key}={value}"]
    return [*command, "--out", str(out / trial.name), "--no-progress", *train_args]


def run_trials(
    trials: list[Trial],
    model: str,
    preset: str,
    out: Path,
    train_args: list[str],
    parallel: int,
    resume: bool = False,
) -> dict[str, dict[str, Any]]:
    """Train the trials, ``parallel`` at a time; each trial's summary (or its failure).

    With ``resume``, a trial that finished before (its trial.json) is taken as it is, and the
    others continue from their last checkpoints.
    """
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, Any]] = {}
    pending = []
    for trial in trials:
        done = out / trial.name / TRIAL_FILE
        if resume and done.is_file() and "error" not in (result := json.loads(done.read_text())):
            print(
                f"sweep: {trial.name} finished before: validation loss "
                f"{result.get('best_val_loss')}",
                flush=True,
            )
            results[trial.name] = result
        else:
            pending.append(trial)
    running: list[tuple[Trial, subprocess.Popen, Any, float]] = []
    while pending or running:
        while pending and len(running) < parallel:
            trial = pending.pop(0)
            log = (out / f"{trial.name}.log").open("a" if resume else "w")
            command = _command(trial, model, preset, out, train_args)
            if resume:
                command.append("--resume")
            print(f"sweep: start {trial.name}: {' '.join(command[2:])}", flush=True)
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
            running.append((trial, process, log, time.perf_counter()))
        time.sleep(0.2)
        for item in list(running):
            trial, process, log, started = item
            if process.poll() is None:
                continue
            running.remove(item)
            log.close()
            summary_file = out / trial.name / "summary.json"
            if process.returncode == 0 and summary_file.is_file():
                result = json.loads(summary_file.read_text())
            else:
                result = {"error": f"exit code {process.returncode}, see {trial.name}.log"}
            result.update(overrides=trial.overrides, wall_seconds=time.perf_counter() - started)
            results[trial.name] = result
            if (out / trial.name).is_dir():
                (out / trial.name / TRIAL_FILE).write_text(json.dumps(result, indent=2) + "\n")
            loss = result.get("best_val_loss")
            print(f"sweep: done {trial.name}: validation loss {loss}", flush=True)
    return results


# Train arguments that change when a trial saves, not what it learns: a sweep may go on with
# another value (the resumed trials train the same steps either way).
UNLEARNED_ARGS = ("--save-interval",)


def _learned(plan: dict[str, Any]) -> dict[str, Any]:
    """The plan without its UNLEARNED_ARGS (and their values)."""
    args, kept = iter(plan.get("train_args", [])), []
    for arg in args:
        if arg in UNLEARNED_ARGS:
            next(args, None)
        elif not arg.startswith(tuple(f"{name}=" for name in UNLEARNED_ARGS)):
            kept.append(arg)
    return {**plan, "train_args": kept}


def check_plan(out: Path, this: dict[str, Any], resume: bool) -> None:
    """Record the sweep's plan in ``out``; going on, insist it is the one the sweep began with
    (but for UNLEARNED_ARGS)."""
    path = out / PLAN_FILE
    this = _learned(json.loads(json.dumps(this)))  # as it reads back: tuples as lists
    if resume and path.is_file():
        before = _learned(json.loads(path.read_text()))
        if before != this:
            changed = sorted(key for key in this if before.get(key) != this[key])
            raise ValueError(
                f"{out} holds a sweep with another {', '.join(changed)}: "
                f"{ {key: before.get(key) for key in changed} }; resume it with those, or "
                "give another --out"
            )
        return
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(this, indent=2) + "\n")


def _score(result: dict[str, Any]) -> float:
    loss = result.get("best_val_loss")
    return math.inf if loss is None else float(loss)


def sweep(
    model: str,
    preset: str,
    factors: dict[str, list[Any]],
    out: Path,
    train_args: list[str],
    parallel: int,
    data_dir: Path,
    evaluate: bool = True,
    resume: bool = False,
) -> dict[str, Any]:
    """Run the sweep; write and return ``out/sweep.json`` (every trial, the chosen one)."""
    started = time.perf_counter()
    check_plan(
        out,
        {"model": model, "preset": preset, "factors": factors, "train_args": train_args},
        resume,
    )
    results = run_trials(plan(factors), model, preset, out, train_args, parallel, resume)
    extra = combination(factors, {name: _score(r) for name, r in results.items()})
    if extra is not None:
        results |= run_trials([extra], model, preset, out, train_args, parallel, resume)
    scores = {name: _score(r) for name, r in results.items()}
    chosen = min(scores, key=scores.get)
    if math.isinf(scores[chosen]):
        raise RuntimeError(f"every trial failed; see the logs in {out}")
    report: dict[str, Any] = {
        "model": model,
        "preset": preset,
        "factors": factors,
        "train_args": train_args,
        "chosen": chosen,
        "chosen_overrides": results[chosen]["overrides"],
        "seconds": time.perf_counter() - started,
        "trials": results,
    }
    for name in results:  # keep only the chosen trial's weights
        if name != chosen:
            for sub in ("best", "last"):
                shutil.rmtree(out / name / sub, ignore_errors=True)
    shutil.rmtree(out / chosen / "last", ignore_errors=True)
    if evaluate:
        from training.evaluate import evaluate_checkpoint

        report["evaluations"] = []
        for split, storage in (("validation", "float32"), ("test", "float32"), ("test", "float16")):
            result = evaluate_checkpoint(out / chosen / "best", data_dir, split, 32, None, storage)
            path = out / chosen / f"eval-{split}-{storage}.json"
            path.write_text(json.dumps(result, indent=2) + "\n")
            report["evaluations"].append(result)
    (out / "sweep.json").write_text(json.dumps(report, indent=2) + "\n")
    print(format_table(report))
    return report


def format_table(report: dict[str, Any]) -> str:
    """The trials as a Markdown table, best validation loss first."""
    rows = sorted(report["trials"].items(), key=lambda item: _score(item[1]))
    lines = [
        "| trial | parameters | steps | tokens | validation loss | validation PPL |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in rows:
        loss = r.get("best_val_loss")
        mark = " (chosen)" if name == report["chosen"] else ""
        if loss is None:
            lines.append(f"| {name}{mark} | | | | failed: {r.get('error')} | |")
            continue
        lines.append(
            f"| {name}{mark} | {r['parameters']:,} | {r['steps']:,} | {r['tokens_seen']:,} "
            f"| {loss:.4f} | {math.exp(loss):.2f} |"
        )
    return "\n".join(lines)
