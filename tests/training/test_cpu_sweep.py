"""scripts/cpu_sweep.sh: how it reports a sweep that spans sittings, and its usage."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # real weights on a real port, training runs, or a browser

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "cpu_sweep.sh"


def _run(out: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, **(env or {})}
    return subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=600
    )


def test_status_shows_finished_and_running_trials(tmp_path):
    out = tmp_path / "sweep"
    (out / "base").mkdir(parents=True)
    (out / "base" / "trial.json").write_text(json.dumps({"best_val_loss": 4.6719}))
    (out / "context=4").mkdir()
    records = [
        {"step": 700, "tokens_per_s": 3200.0},
        {"step": 750, "tokens_per_s": 3180.0, "val_loss": 5.4321},
        {"step": 800, "tokens": 800 * 2048, "tokens_per_s": 3150.0},
    ]
    (out / "context=4" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (out / "context=4" / "last").mkdir()  # what a resume starts from: step 750, not 800
    (out / "context=4" / "last" / "config.json").write_text(json.dumps({"step": 750}))
    (out / "d_hidden=512").mkdir()  # started, nothing logged yet
    result = _run(out, "status")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "not running"
    assert "base" in lines[1] and "done" in lines[1] and "4.6719" in lines[1]
    assert "800/17500" in lines[2] and "3,150 tokens/s" in lines[2]
    assert "3.0 h left" in lines[2]  # 16,700 steps of 2,048 tokens at 3,150 tokens/s
    assert "validation loss 5.4321 at step 750" in lines[2] and "saved at 750" in lines[2]
    assert "0/17500" in lines[3] and "saved" not in lines[3]


def test_pause_and_stop_without_a_sweep_say_so_and_bad_commands_fail(tmp_path):
    out = tmp_path / "sweep"
    for command in ("pause", "resume", "stop"):
        result = _run(out, command)
        assert result.returncode == 0 and "not running" in result.stdout, command
    result = _run(out, "begin")
    assert result.returncode == 2 and "usage" in result.stderr


def test_a_cpu_without_bf16_is_refused_before_anything_starts(tmp_path):
    """The trials train in bf16: where the CPU would emulate it, start and run say so and stop."""
    out = tmp_path / "sweep"
    for command in ("start", "run"):
        result = _run(out, command, env={"HAS_BF16": "0", "FORCE": "0", "TINY": "0"})
        assert result.returncode == 1, (command, result.stdout, result.stderr)
        assert "no bf16 instructions" in result.stderr and "FORCE=1" in result.stderr
        assert not out.exists() and not Path(f"{out}.pid").exists(), command


def test_tiny_run_sweeps_then_trains_the_seed_model_at_the_chosen_context(prepared, tmp_path):
    """TINY=1 rehearses the whole run: the sweep, then the seed model at the chosen context
    (a rehearsal trains it even where that is the shipped seed model's); run again, it trains
    nothing."""
    out = tmp_path / "sweep"
    env = {"TINY": "1", "DATA": str(prepared), "OMP_NUM_THREADS": "1"}
    first = _run(out, "run", env=env)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    report = json.loads((out / "sweep.json").read_text())
    assert set(report["trials"]) >= {"base", "context=2", "dropout=0.0"}
    chosen = out / report["chosen"] / "best" / "config.json"
    context = json.loads(chosen.read_text())["config"]["context"]
    seed = tmp_path / "sweep-seeds" / f"context={context}"
    for split in ("validation-float32", "test-float32", "test-float16"):
        name = f"eval-{split}.json"
        assert (seed / name).is_file(), name
    assert json.loads((seed / "summary.json").read_text())["precision"] == "bf16"
    assert f"--sweep {out} --seeds {out}-seeds" in first.stdout

    again = _run(out, "run", env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "sweep: start" not in again.stdout and "finished before" in again.stdout
    assert f"{seed} (trained and evaluated before)" in again.stdout
    assert json.loads((out / "sweep.json").read_text())["chosen"] == report["chosen"]
    status = _run(out, "status", env=env)
    assert f"finished: {report['chosen']} chosen" in status.stdout
