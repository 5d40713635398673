"""The prepared GPU serving run (scripts/gpu_serving.sh, python -m bench gpu-serving),
rehearsed on the CPU provider as CI can: it writes the figures the GPU run must give."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_gpu_serving_script_rehearses_on_the_cpu(tmp_path):
    env = {
        **os.environ,
        "PROVIDERS": "cpu",
        "CLIENTS": "1 2",
        "ROUNDS": "1",
        "OUT": str(tmp_path),
        "PYTHON": sys.executable,
    }
    run = subprocess.run(
        ["bash", "scripts/gpu_serving.sh"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    figures = json.loads((tmp_path / "gpu-serving.json").read_text())
    assert figures["model"] == "attention" and figures["provider"] == "cpu"
    cpu = figures["providers"]["cpu"]
    assert figures["single_stream_ms_64"] == cpu["single_stream_ms_64"] > 0
    assert set(cpu["new_tokens_per_s"]) == {"1", "2"} and set(cpu["p99_ms"]) == {"1", "2"}
    assert all(v > 0 for v in cpu["new_tokens_per_s"].values())
    assert figures["command"].startswith("python -m bench gpu-serving")
    assert (tmp_path / "gpu-serving-log.txt").exists()
