"""The tools a GPU session runs, rehearsed here on the CPU: the provider check and the report."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import onnxruntime as ort
import pytest

from training.report import render

pytestmark = pytest.mark.slow  # real weights on a real port, training runs, or a browser

ROOT = Path(__file__).resolve().parents[2]


def _run_check(tmp_path: Path, *extra: str) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path / "check.json"
    result = subprocess.run(
        [
            *(sys.executable, "-m", "bench", "cuda-check", "--runs", "5", "--warmup", "1"),
            *("--greedy-tokens", "8", "--generations", "2", "--json", str(out), *extra),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    return result, json.loads(out.read_text())


def test_provider_check_compares_every_shipped_model(tmp_path):
    result, report = _run_check(tmp_path, "--allow-cpu")
    assert result.returncode == 0, result.stderr
    assert set(report["models"]) == {"attention", "attention-seed", "bengio"}
    for name, model in report["models"].items():
        assert model["within_tolerance"], name
        assert model["greedy"]["tokens"] > 0
        latency = model["next_token_latency"]
        assert latency["prompt_tokens"] == 64 and latency["gpu"]["median_ms"] > 0
        assert model["generate_64_tokens"]["gpu"]["median_ms"] > 0
        assert set(model["logits"]) >= {"random, batch 4 x full context", "real text, 1 token"}
    assert "attention" in report["models"]["attention"]  # its attention weights were compared
    assert report["models"]["attention"]["generate_64_tokens"]["kv_cache"] == {
        "cpu": True,
        "gpu": True,
    }
    assert "decoder with key/value cache, 32 steps" in report["models"]["attention"]["logits"]
    assert "attention" not in report["models"]["bengio"]


def test_provider_check_of_no_model_fails(tmp_path):
    """A folder without models (say, carried files gone on the device) checks nothing, and
    fails saying so rather than passing."""
    empty = tmp_path / "models"
    empty.mkdir()
    result, report = _run_check(tmp_path, "--allow-cpu", "--models-dir", str(empty))
    assert result.returncode == 1
    assert report["models"] == {} and not report["passed"]
    assert report["failures"] == [f"no model folder (*/card.json) in {empty}"]


@pytest.mark.skipif(
    "CUDAExecutionProvider" in ort.get_available_providers() and bool(shutil.which("nvidia-smi")),
    reason="a GPU may be usable here",
)
def test_provider_check_fails_when_cuda_is_not_used(tmp_path):
    result, report = _run_check(tmp_path)
    assert result.returncode == 1
    assert not report["passed"]
    assert all("loaded on CPUExecutionProvider" in f for f in report["failures"])


def test_report_renders_cuda_check_int8_and_sweep():
    row = {
        "name": "bengio",
        "kind": "bengio",
        "parameters": 18_883_584,
        "context": 8,
        "tokens_seen": 36_000_000,
        "training_seconds": 125.0,
        "hardware": "NVIDIA H100 80GB HBM3",
        "latency": {"median_ms": 1.5, "p90_ms": 1.7},
        "validation": {"perplexity": 106.9, "bits_per_character": 1.8},
        "test": {"perplexity": 108.9, "bits_per_character": 1.82},
        "test_float16": {},
    }
    timing = {"median_ms": 0.3, "p90_ms": 0.4}
    cuda = {
        "gpu": "NVIDIA H100 80GB HBM3, 580.159.04",
        "onnxruntime": "1.31.1",
        "cpu": "x86_64, 16 cores",
        "cpu_threads": 2,
        "tolerance": 1e-3,
        "passed": True,
        "file": "benchmarks/ort-cuda.json",
        "models": {
            "bengio": {
                "gpu_provider": "CUDAExecutionProvider",
                "max_abs_diff": 2.5e-5,
                "greedy": {"identical": True, "first_difference": None},
                "next_token_latency": {"gpu": timing, "cpu": {"median_ms": 1.2, "p90_ms": 1.3}},
            }
        },
    }
    trial = {"parameters": 18_883_584, "steps": 17_500, "tokens_seen": 35_840_000}
    sweep = {
        "model": "bengio",
        "preset": "base",
        "factors": {"context": [4, 12]},
        "train_args": ["--batch-size", "16", "--max-steps", "17500"],
        "chosen": "context=12",
        "seconds": 300.0,
        "trials": {
            "base": {**trial, "best_val_loss": 4.67, "hardware": "NVIDIA H100 80GB HBM3"},
            "context=12": {**trial, "best_val_loss": 4.65, "hardware": "NVIDIA H100 80GB HBM3"},
        },
    }
    figures = {
        "test_bpc": 1.8196,
        "next_token_ms": {"p50_ms": 1.47},
        "generate_64_ms": {"p50_ms": 95.8},
    }
    int8 = {
        "cpu": "x86_64, 2 cores",
        "threads": 2,
        "file": "benchmarks/quantize-cpu.json",
        "models": {
            "bengio": {
                "float32": figures,
                "int8": {
                    "test_bpc": 1.8198,
                    "next_token_ms": {"p50_ms": 0.3},
                    "generate_64_ms": {"p50_ms": 17.5},
                },
            },
            "attention": {"float32": figures, "int8": figures, "stale": True},
        },
    }
    text = render(
        {
            "rows": [row],
            "cuda": cuda,
            "int8": int8,
            "sweeps": {"bengio": sweep},
            "samples": {},
            "cpu": "x86_64, 2 ONNX Runtime threads",
            "curves": False,
        }
    )
    assert (
        "| `bengio` | CUDAExecutionProvider | 2.5e-05 | identical | 0.30 / 0.40 | 1.20 | — |"
        in text
    )
    assert "within the tolerance of 0.001" in text
    assert "| `bengio` | 1.8196 → 1.8198 (+0.0002) | 1.47 → 0.30 | 95.8 → 17.5 |" in text
    assert "| `attention` | measured on weights since replaced: rerun | | |" in text
    assert "python -m bench quantize --json benchmarks/quantize-cpu.json" in text
    assert "## How `bengio` was tuned (validation split only)" in text
    assert "| context=12 (chosen) |" in text
    assert "--vary context=4,12 -- --batch-size 16 --max-steps 17500" in text
