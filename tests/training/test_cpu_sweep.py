"""scripts/cpu_sweep.sh: how it reports a sweep that spans sittings, and its usage."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "cpu_sweep.sh"


def _run(out: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable}
    return subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=60
    )


def test_status_shows_finished_and_running_trials(tmp_path):
    out = tmp_path / "sweep"
    (out / "base").mkdir(parents=True)
    (out / "base" / "trial.json").write_text(json.dumps({"best_val_loss": 4.6719}))
    (out / "context=4").mkdir()
    records = [
        {"step": 700, "tokens_per_s": 3200.0},
        {"step": 750, "tokens_per_s": 3180.0, "val_loss": 5.4321},
        {"step": 800, "tokens_per_s": 3150.0},
    ]
    (out / "context=4" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (out / "d_hidden=512").mkdir()  # started, nothing logged yet
    result = _run(out, "status")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "not running"
    assert "base" in lines[1] and "done" in lines[1] and "4.6719" in lines[1]
    assert "800/17500" in lines[2] and "3,150 tokens/s" in lines[2]
    assert "validation loss 5.4321 at step 750" in lines[2]
    assert "0/17500" in lines[3]


def test_pause_and_stop_without_a_sweep_say_so_and_bad_commands_fail(tmp_path):
    out = tmp_path / "sweep"
    for command in ("pause", "resume", "stop"):
        result = _run(out, command)
        assert result.returncode == 0 and "not running" in result.stdout, command
    result = _run(out, "begin")
    assert result.returncode == 2 and "usage" in result.stderr
