"""bench-attention: the notebook's table, as data."""

from __future__ import annotations

import json

from training.__main__ import main
from training.bench import bench_attention, format_table


def test_bench_attention_reports_times_speedups_and_differences():
    result = bench_attention(batch=2, steps=5, d_model=16, loop_repeats=1, repeats=3, device="cpu")
    assert set(result["ms_per_batch"]) == {"loops", "matrix", "fused"}
    assert all(v > 0 for v in result["ms_per_batch"].values())
    assert max(result["max_abs_difference"].values()) <= 1e-5
    assert "speed-up" in format_table(result)


def test_bench_attention_cli_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = main(
        [
            "bench-attention",
            "--batch",
            "2",
            "--steps",
            "4",
            "--d-model",
            "8",
            "--repeats",
            "2",
            "--loop-repeats",
            "1",
            "--device",
            "cpu",
            "--json",
            str(out),
        ]
    )
    assert code == 0
    assert json.loads(out.read_text())["shape"] == {
        "batch": 2,
        "steps": 4,
        "d_model": 8,
        "n_head": 1,
    }
    assert "loops" in capsys.readouterr().out
