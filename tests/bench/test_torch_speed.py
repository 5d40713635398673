"""python -m bench attention / inference: the notebook's table and ORT against torch, as data."""

from __future__ import annotations

import json

import pytest

from bench.__main__ import main
from bench.torch_speed import bench_attention, format_table


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
            "attention",
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


@pytest.mark.slow
def test_bench_inference_rebuilds_the_shipped_models_in_torch():
    """PyTorch models rebuilt from the shipped graphs' weights agree with ONNX Runtime; the
    process's torch thread count is left as it was (the suite's later trainings run on it); the
    CPU is named as the report names it."""
    from pathlib import Path

    import torch

    from bench.torch_speed import bench_inference, format_inference_table
    from runtime.hardware import cpu_label

    models = Path(__file__).resolve().parents[2] / "models"
    threads = torch.get_num_threads()
    result = bench_inference(
        models, ["attention", "bengio"], [4, 300], threads=threads + 1, repeats=1
    )
    assert torch.get_num_threads() == threads
    assert result["cpu"] == cpu_label()
    rows = {(r["model"], r["tokens"]) for r in result["rows"]}
    # 300 tokens pass the attention model's context: measured for bengio only
    assert rows == {("attention", 4), ("bengio", 4), ("bengio", 300)}
    for row in result["rows"]:
        assert row["max_abs_diff"] < 1e-4, row
        assert row["onnxruntime_ms"] > 0 and row["pytorch_ms"] > 0
    assert "| `attention` (13.9 M) | 4 |" in format_inference_table(result)


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["attention", "--repeats", "0"], "--repeats: must be at least 1, got 0"),
        (["train", "--warmup", "-1"], "--warmup: must be at least 0, got -1"),
    ],
)
def test_bench_values_out_of_range_are_usage_errors(args, said, capsys):
    with pytest.raises(SystemExit) as ended:
        main(args)
    err = capsys.readouterr().err
    assert ended.value.code == 2 and said in err
    assert f"python -m bench {args[0]}" in err  # argparse's prog names the command


def test_bench_train_refuses_an_unknown_preset():
    with pytest.raises(SystemExit, match="bengio preset 'huge' is not one of"):
        main(["train", "--model", "bengio", "--preset", "huge"])


def test_bench_lists_its_benchmarks_and_refuses_an_unknown_one(capsys):
    """`python -m bench` names every benchmark; an unknown name is a usage error naming them."""
    assert main([]) == 0
    listed = capsys.readouterr().out
    assert "attention" in listed and "service" in listed and "docker" in listed
    assert main(["nope"]) == 2
    assert "no benchmark 'nope'" in capsys.readouterr().err
