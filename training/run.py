"""What a training run keeps between its steps and after it: its progress, the checkpoint a
resumed run starts from, its metrics, and its summary."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from training.checkpoint import load_checkpoint, read_config, recover, save_checkpoint
from training.device import hardware
from training.plot import plot_curves

if TYPE_CHECKING:
    from training.batches import Batches
    from training.train import TrainConfig


@dataclass
class Progress:
    """Where a run stands; with the weights, the optimizer and the random states, what a resumed
    run starts from (out/last/train_state.pt)."""

    step: int = 0
    tokens_seen: int = 0
    elapsed: float = 0.0  # seconds of training, resumed runs included
    best_val: float = float("inf")
    stale: int = 0  # validations since the best


def resume(
    cfg: TrainConfig,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Batches,
    device: torch.device,
    rank: int,
    main: bool,
    log,
) -> tuple[Progress, list[dict[str, Any]]]:
    """The run's progress and metrics so far: from out/last with --resume (weights, optimizer
    and random states restored), else a fresh run folder."""
    last_dir, metrics_path = cfg.out / "last", cfg.out / "metrics.jsonl"
    recover(last_dir)
    recover(cfg.out / "best")
    progress, history = Progress(), []
    if cfg.resume and (last_dir / "train_state.pt").is_file():
        model.load_state_dict(load_checkpoint(last_dir, device).state_dict())
        state = torch.load(last_dir / "train_state.pt", map_location=device, weights_only=False)
        optimizer.load_state_dict(state["optimizer"])
        batches.generator.set_state(state["generators"][rank].to("cpu"))
        torch.set_rng_state(state["torch_rng"])
        progress = Progress(
            state["step"], state["tokens_seen"], state["elapsed"], state["best_val"], state["stale"]
        )
        if metrics_path.is_file():
            history = [json.loads(line) for line in metrics_path.read_text().splitlines()]
            # Records past the checkpoint belong to steps that are trained again: drop them.
            history = [h for h in history if h["step"] <= progress.step]
            if main:
                metrics_path.write_text("".join(json.dumps(h) + "\n" for h in history))
        log(f"resumed {cfg.out} at step {progress.step}")
    elif main:
        cfg.out.mkdir(parents=True, exist_ok=True)
        metrics_path.write_text("")
    return progress, history


def save_last(
    last_dir: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Batches,
    world: int,
    progress: Progress,
    saved: dict[str, Any],
) -> None:
    """The checkpoint a resumed run starts from: weights, optimizer, random states, progress."""
    save_checkpoint(
        last_dir,
        model,
        saved,
        {
            "optimizer": optimizer.state_dict(),
            "generators": gather_generators(batches.generator, world),
            "torch_rng": torch.get_rng_state(),
            "step": progress.step,
            "tokens_seen": progress.tokens_seen,
            "elapsed": progress.elapsed,
            "best_val": progress.best_val,
            "stale": progress.stale,
        },
    )


def gather_generators(generator: torch.Generator, world: int) -> list[torch.Tensor]:
    """Every rank's batch-sampling state, so a resumed run draws the batches it would have."""
    state = generator.get_state()
    if world == 1:
        return [state]
    gathered = [None] * world
    dist.all_gather_object(gathered, state)
    return gathered


def run_info(
    cfg: TrainConfig, meta: dict[str, Any], device: torch.device, world: int, precision: str
) -> dict[str, Any]:
    """What every checkpoint of the run records of how it was made."""
    return {
        "kind": cfg.kind,
        "preset": cfg.preset,
        "train_config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()},
        "tokenizer_sha256": meta["tokenizer_sha256"],
        "data": {"corpus": meta["corpus"], "splits": meta["splits"]},
        "hardware": hardware(device) + (f" x{world}" if world > 1 else ""),
        "precision": precision,
        "git_commit": git_commit(),
        "command": "python -m training " + " ".join(sys.argv[1:]),
    }


def git_commit() -> str | None:
    """The commit the code came from (MACHADO_GIT_COMMIT where the tree has no .git)."""
    if os.environ.get("MACHADO_GIT_COMMIT"):
        return os.environ["MACHADO_GIT_COMMIT"]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def write_summary(
    cfg: TrainConfig,
    history: list[dict[str, Any]],
    n_params: int,
    progress: Progress,
    started: float,
    hardware_name: str,
    precision: str,
) -> dict[str, Any]:
    """The run's curves (curves.png) and summary (summary.json), from its best checkpoint."""
    plot_curves(history, cfg.out / "curves.png", f"{cfg.kind}/{cfg.preset}")
    best = read_config(cfg.out / "best")
    summary = {
        "out": str(cfg.out),
        "best_checkpoint": str(cfg.out / "best"),
        "parameters": n_params,
        "steps": progress.step,
        "tokens_seen": progress.tokens_seen,
        "training_seconds": round(time.perf_counter() - started, 1),
        "best_step": best["step"],
        "best_val_loss": best["val_loss"],
        "train_tokens_per_s": mean_rate(history),
        "hardware": hardware_name,
        "precision": precision,
        "best_val_perplexity": math.exp(best["val_loss"]),
    }
    (cfg.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def mean_rate(history: list[dict[str, Any]]) -> float:
    """Mean training throughput, leaving out the first record (warm-up, compilation)."""
    rates = [h["tokens_per_s"] for h in history[1:]] or [h["tokens_per_s"] for h in history]
    return round(sum(rates) / len(rates), 1) if rates else 0.0
