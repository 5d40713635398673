"""The training loop: learns, writes its artifacts, reproduces, resumes, stops early."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import training.checkpoint as checkpoint
import training.device as device_module
import training.train as train_module
from training.checkpoint import build_model, load_checkpoint, preset, read_config, save_checkpoint
from training.device import autocast_for, resolve_precision
from training.train import TrainConfig, learning_rate, train

SMALL = {"d_model": 32, "n_layer": 1, "n_head": 2, "context": 32}


def _config(prepared: Path, out: Path, **changes) -> TrainConfig:
    fields = dict(
        kind="attention",
        preset="tiny",
        overrides=SMALL,
        out=out,
        data=prepared,
        batch_size=8,
        lr=3e-3,
        warmup_steps=5,
        max_steps=40,
        eval_interval=20,
        log_interval=10,
        seed=7,
        device="cpu",
        progress=False,
    )
    fields.update(changes)
    return TrainConfig(**fields)


def _losses(run: Path) -> list[tuple]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["train_loss"], r.get("val_loss")) for r in records]


def test_train_learns_and_writes_artifacts(prepared, tmp_path):
    """Validation loss falls well below the uniform guess; every artifact is written."""
    summary = train(_config(prepared, tmp_path / "run"))
    run = tmp_path / "run"
    assert summary["best_val_loss"] < math.log(400) - 1.0, summary
    for name in (
        "best/model.safetensors",
        "best/config.json",
        "last/train_state.pt",
        "metrics.jsonl",
        "curves.png",
        "summary.json",
    ):
        assert (run / name).is_file(), name
    info = read_config(run / "best")
    assert info["kind"] == "attention" and info["config"]["d_model"] == 32
    assert info["tokens_seen"] == info["step"] * 8 * 32
    assert load_checkpoint(run / "best").config.context == 32


def test_train_same_seed_same_losses(prepared, tmp_path):
    train(_config(prepared, tmp_path / "a", max_steps=20))
    train(_config(prepared, tmp_path / "b", max_steps=20))
    assert _losses(tmp_path / "a") == _losses(tmp_path / "b")


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_train_resume_continues_as_if_uninterrupted(prepared, tmp_path, precision):
    """Stopping at step 20 and resuming gives the losses of a run that never stopped."""
    train(_config(prepared, tmp_path / "straight", precision=precision))
    train(_config(prepared, tmp_path / "split", stop_at=20, precision=precision))
    assert read_config(tmp_path / "split" / "last")["step"] == 20
    train(_config(prepared, tmp_path / "split", resume=True, precision=precision))
    straight, split = _losses(tmp_path / "straight"), _losses(tmp_path / "split")
    assert [s for s, *_ in split] == [s for s, *_ in straight]
    for (step, a_train, a_val), (_, b_train, b_val) in zip(straight, split, strict=True):
        assert a_train == pytest.approx(b_train, rel=1e-5), step
        assert (a_val is None) == (b_val is None)
        if a_val is not None:
            assert a_val == pytest.approx(b_val, rel=1e-5), step


def test_train_resume_after_a_kill_drops_the_records_it_trains_again(prepared, tmp_path):
    """A run killed after its last checkpoint logged steps it has to train again on resuming:
    those records go, so metrics.jsonl reads as one run."""
    train(_config(prepared, tmp_path / "straight"))
    run = tmp_path / "killed"
    train(_config(prepared, run, stop_at=20))
    with (run / "metrics.jsonl").open("a") as handle:  # what the killed run logged after 20
        handle.write(json.dumps({"step": 30, "train_loss": 99.0, "tokens_per_s": 1.0}) + "\n")
    train(_config(prepared, run, resume=True))
    straight, resumed = _losses(tmp_path / "straight"), _losses(run)
    assert [s for s, *_ in resumed] == [s for s, *_ in straight]
    assert [t for _, t, _ in resumed] == pytest.approx([t for _, t, _ in straight], rel=1e-5)


def _before_step(monkeypatch, number: int, action) -> None:
    """Make the training loop call ``action`` (a signal, a crash) as its step ``number`` starts."""
    steps = 0
    real_step = train_module.training_step

    def step(*args):
        nonlocal steps
        steps += 1
        if steps == number:
            action()
        return real_step(*args)

    monkeypatch.setattr(train_module, "training_step", step)


def test_sigterm_saves_the_current_step_and_resume_goes_on_from_it(prepared, tmp_path, monkeypatch):
    """SIGTERM ends the run after the step under way, its state saved there (not at the last
    validation), and the resumed run validates as if never stopped."""
    import os
    import signal

    train(_config(prepared, tmp_path / "straight"))
    handler = signal.getsignal(signal.SIGTERM)
    # Between validations (every 20).
    _before_step(monkeypatch, 30, lambda: os.kill(os.getpid(), signal.SIGTERM))
    run = tmp_path / "terminated"
    with pytest.raises(SystemExit) as ended:
        train(_config(prepared, run))
    assert ended.value.code == 128 + signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) == handler
    assert torch.load(run / "last" / "train_state.pt", weights_only=False)["step"] == 30
    monkeypatch.undo()
    train(_config(prepared, run, resume=True))
    validated = {s: v for s, _, v in _losses(tmp_path / "straight") if v is not None}
    resumed = {s: v for s, _, v in _losses(run) if v is not None}
    assert resumed.keys() == validated.keys() == {20, 40}
    assert resumed == pytest.approx(validated, rel=1e-5)


def test_save_interval_bounds_what_a_kill_loses_and_resume_goes_on_from_it(
    prepared, tmp_path, monkeypatch
):
    """A run killed outright (SIGKILL: no handler runs) loses only the steps since its last save,
    every --save-interval steps between validations, and the resumed run validates as if never
    stopped."""
    train(_config(prepared, tmp_path / "straight"))

    def die():
        raise MemoryError("killed")

    _before_step(monkeypatch, 34, die)  # steps 1 to 33 done: saved at 20 (validation), 25, 30
    run = tmp_path / "killed"
    with pytest.raises(MemoryError):
        train(_config(prepared, run, save_interval=5))
    assert torch.load(run / "last" / "train_state.pt", weights_only=False)["step"] == 30
    monkeypatch.undo()
    train(_config(prepared, run, save_interval=5, resume=True))
    straight, resumed = _losses(tmp_path / "straight"), _losses(run)
    assert [s for s, *_ in resumed] == [s for s, *_ in straight]
    validated = {s: v for s, _, v in straight if v is not None}
    assert {s: v for s, _, v in resumed if v is not None} == pytest.approx(validated, rel=1e-5)


def test_checkpoint_killed_while_saving_keeps_the_previous_one(tmp_path, monkeypatch):
    """A save that dies half-way leaves the old checkpoint whole; the next save cleans up."""
    old, new = (build_model(preset("bengio", "tiny", vocab_size=50)) for _ in range(2))
    folder = tmp_path / "last"
    save_checkpoint(folder, old, {"step": 1}, {"step": 1})

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # the process dies between the weights and the training state

    monkeypatch.setattr(checkpoint.torch, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(folder, new, {"step": 2}, {"step": 2})
    monkeypatch.undo()
    assert read_config(folder)["step"] == 1
    assert torch.load(folder / "train_state.pt")["step"] == 1
    loaded = load_checkpoint(folder).state_dict()
    assert all(torch.equal(v, loaded[k]) for k, v in old.state_dict().items())
    save_checkpoint(folder, new, {"step": 2}, {"step": 2})
    assert read_config(folder)["step"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]


def test_checkpoint_swap_cut_between_renames_is_recovered(prepared, tmp_path):
    """Killed after moving the old checkpoint away and before moving the new one in: the new,
    complete one is taken, by `recover` and by a resuming run."""
    run = tmp_path / "run"
    train(_config(prepared, run, stop_at=20))
    (run / "last").rename(run / "last.tmp")  # the state such a kill leaves
    checkpoint.recover(run / "last")
    assert read_config(run / "last")["step"] == 20
    (run / "last").rename(run / "last.tmp")
    summary = train(_config(prepared, run, resume=True))
    assert summary["steps"] == 40 and not (run / "last.tmp").exists()
    assert [s for s, *_ in _losses(run)] == [10, 20, 30, 40]


def test_precision_auto_is_bf16_on_cuda_and_on_cpus_that_have_it(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(device_module, "cpu_info", lambda: ("x", {"avx2", "avx512_bf16"}))
    assert resolve_precision("auto", cpu) == "bf16"
    monkeypatch.setattr(device_module, "cpu_info", lambda: ("x", {"avx2", "amx_bf16"}))
    assert resolve_precision("auto", cpu) == "bf16"
    monkeypatch.setattr(device_module, "cpu_info", lambda: ("x", {"avx2", "avx512f"}))
    assert resolve_precision("auto", cpu) == "fp32"  # emulated bf16 would be slower
    assert resolve_precision("auto", cuda) == "bf16"
    assert resolve_precision("bf16", cpu) == "bf16" and resolve_precision("fp32", cuda) == "fp32"
    with pytest.raises(ValueError, match="auto, bf16, fp32"):
        resolve_precision("fp16", cpu)
    layer, x = torch.nn.Linear(4, 4), torch.randn(2, 4)
    with autocast_for(cpu, "bf16"):
        assert layer(x).dtype == torch.bfloat16
    with autocast_for(cpu, "fp32"):
        assert layer(x).dtype == torch.float32


def test_bf16_on_a_cpu_without_bf16_instructions_warns(prepared, tmp_path, monkeypatch, capsys):
    """Asked for bf16 where the CPU would emulate it, the run says so (and still trains)."""
    monkeypatch.setattr(device_module, "cpu_info", lambda: ("x", {"avx2"}))
    train(_config(prepared, tmp_path / "emulated", max_steps=2, eval_interval=2, precision="bf16"))
    assert "no bf16 instructions" in capsys.readouterr().out
    monkeypatch.setattr(device_module, "cpu_info", lambda: ("x", {"avx2", "amx_bf16"}))
    train(_config(prepared, tmp_path / "native", max_steps=2, eval_interval=2, precision="bf16"))
    assert "no bf16 instructions" not in capsys.readouterr().out


def test_train_records_its_precision(prepared, tmp_path):
    summary = train(_config(prepared, tmp_path / "run", max_steps=10, precision="fp32"))
    assert summary["precision"] == "fp32"
    assert read_config(tmp_path / "run" / "best")["precision"] == "fp32"
    assert "thread" in summary["hardware"]


def test_train_early_stopping(prepared, tmp_path):
    """With nothing to learn (lr 0), training stops after `patience` stale evaluations."""
    summary = train(
        _config(prepared, tmp_path / "run", lr=0.0, patience=2, eval_interval=10, max_steps=200)
    )
    assert summary["steps"] == 30 and summary["best_step"] == 10


@pytest.mark.slow
def test_train_time_budget_ends_run(prepared, tmp_path):
    summary = train(
        _config(prepared, tmp_path / "run", max_steps=10**7, time_budget=3.0, eval_interval=10**6)
    )
    assert 0 < summary["steps"] < 10**7 and summary["training_seconds"] < 60


def test_train_bengio(prepared, tmp_path):
    summary = train(
        _config(prepared, tmp_path / "run", kind="bengio", overrides={"block": 32}, max_steps=40)
    )
    assert summary["best_val_loss"] < math.log(400) - 1.0, summary
    assert read_config(tmp_path / "run" / "best")["config"]["pad_id"] == 0


def test_learning_rate_warmup_then_cosine():
    cfg = TrainConfig(lr=1.0, min_lr_ratio=0.1, warmup_steps=10)
    assert learning_rate(0, 110, cfg) == pytest.approx(0.1)
    assert learning_rate(9, 110, cfg) == pytest.approx(1.0)
    assert learning_rate(60, 110, cfg) == pytest.approx(0.55)
    assert learning_rate(110, 110, cfg) == pytest.approx(0.1)


@pytest.mark.slow
def test_train_distributed_two_cpu_processes(prepared, tmp_path):
    """torchrun with two processes on gloo trains one model and writes one checkpoint."""
    import socket

    with socket.socket() as probe:  # torchrun needs a real port: 0 leaves the ranks waiting
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(port),
        "-m",
        "training",
        "train",
        "--preset",
        "tiny",
        "--set",
        "d_model=32",
        "--set",
        "n_layer=1",
        "--set",
        "context=32",
        "--data",
        str(prepared),
        "--out",
        str(out),
        "--max-steps",
        "20",
        "--eval-interval",
        "10",
        "--save-interval",  # between validations too: every rank joins the checkpoint's gather
        "3",
        "--batch-size",
        "4",
        "--device",
        "cpu",
        "--no-progress",
    ]
    result = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=180,
        env={**__import__("os").environ, "OMP_NUM_THREADS": "1"},
    )
    finished = (out / "summary.json").is_file()  # the training itself ended, if it failed
    assert result.returncode == 0, (f"summary written: {finished}", result.stderr[-3000:])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["hardware"].endswith("x2") and summary["steps"] == 20
    assert summary["tokens_seen"] == 20 * 4 * 32 * 2
    model = load_checkpoint(out / "best")
    assert torch.isfinite(next(model.parameters())).all()
