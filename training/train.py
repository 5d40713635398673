"""Training loop for every model kind, on CPU or CUDA, one process or several (torchrun).

AdamW (weight decay on matrices only), linear warm-up then cosine decay, gradient clipping,
bf16 autocast (on CUDA, and on CPUs with bf16 instructions), TF32 on CUDA, optional
torch.compile, periodic validation over the whole validation split, the best checkpoint kept,
early stopping, resumable, seeded.

The step loop never waits for the GPU except at log and evaluation points: batches are sampled on
the device from the token stream that lives there, and losses accumulate on the device.
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from tqdm import tqdm

from training import data
from training.batches import Batches, line_end_ids
from training.checkpoint import (
    build_model,
    parameter_count,
    preset,
    save_checkpoint,
)
from training.device import (
    PRECISIONS,
    autocast_for,
    cpu_has_bf16,
    distributed,
    enable_tf32,
    hardware,
    keep_freed_memory,
    pick_device,
    resolve_precision,
)
from training.evaluate import stream_nll
from training.flags import non_negative, option, positive, within
from training.run import (
    Progress,
    gather_generators,
    resume,
    run_info,
    save_last,
    write_summary,
)


@dataclass
class TrainConfig:
    """One training run. The fields declared with ``option`` are also the flags of
    ``python -m training train`` (training/cli.py builds them from here)."""

    kind: str = "attention"  # attention or bengio (--model)
    preset: str = "tiny"  # a preset of that kind (--preset)
    overrides: dict[str, Any] = field(default_factory=dict)  # model config fields (--set)
    out: Path = Path("runs/tiny")  # run folder: best/, last/, metrics.jsonl, curves.png
    data: Path = Path("data")  # prepared data folder
    corpus: str | None = None  # corpus folder, used where the data is not prepared yet
    progress: bool = True  # show a progress bar (--no-progress)
    batch_size: int = option(32, "sequences per step and process", positive)
    lr: float = option(1e-3, "peak learning rate", within(0, above=True))
    min_lr_ratio: float = option(0.1, "final learning rate as a fraction of the peak", within(0, 1))
    warmup_steps: int = option(100, "linear warm-up steps", non_negative)
    max_steps: int = option(1000, "step budget", positive)
    time_budget: float | None = option(
        None, "seconds; the cosine schedule is stretched to end there", within(0, above=True)
    )
    weight_decay: float = option(0.1, "AdamW weight decay, on matrices only", within(0))
    beta2: float = option(0.95, "AdamW second-moment decay", within(0, 1, below=True))
    grad_clip: float = option(1.0, "gradient norm clip", within(0, above=True))
    eval_interval: int = option(200, "steps between validations", positive)
    save_interval: int | None = option(
        None,
        "steps between saves of OUT/last without validating, so that a run killed outright "
        "(SIGKILL) loses fewer steps; default: at validations and on SIGTERM only",
        positive,
    )
    eval_windows: int | None = option(
        None, "validation windows per evaluation (default: the whole split)", positive
    )
    patience: int | None = option(
        None, "evaluations without improvement before early stopping", positive
    )
    log_interval: int = option(20, "steps between progress updates", positive)
    seed: int = option(1337, "seeds weights, dropout and batch sampling", int)
    text_starts: float = option(
        0.0,
        "share of each batch's windows that start a text as the service reads a prompt: "
        "end-of-text, then the stream from a paragraph's start",
        within(0, 1),
    )
    device: str | None = option(None, "cpu, cuda, cuda:N (default: cuda if present)")
    compile: str | None = option(
        None,
        "torch.compile the model; MODE defaults to reduce-overhead (CUDA graphs: the step loop "
        "stops paying Python's launch overhead)",
        nargs="?",
        const="reduce-overhead",
        metavar="MODE",
    )
    precision: str = option(
        "auto",
        "bf16 autocast or full fp32; auto: bf16 on CUDA and on CPUs with bf16 instructions "
        "(AVX512-BF16, AMX), fp32 elsewhere",
        choices=PRECISIONS,
    )
    stop_at: int | None = option(
        None, "leave off at this step with the schedule unchanged (then --resume)", positive
    )
    resume: bool = option(False, "continue from OUT/last", action="store_true")


def learning_rate(step: int, total: int, cfg: TrainConfig) -> float:
    """Linear warm-up to the peak, then cosine decay to min_lr_ratio of it at ``total``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + 0.5 * (cfg.lr - floor) * (1 + math.cos(math.pi * progress))


def training_step(
    runner: torch.nn.Module,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: tuple[torch.Tensor, torch.Tensor],
    autocast: contextlib.AbstractContextManager,
    grad_clip: float,
) -> torch.Tensor:
    """One optimisation step; returns the loss on the device (no host synchronisation)."""
    x, y = batch
    with autocast:
        _, loss = runner(x, y)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device):
    """AdamW with weight decay on matrices only, its fused kernel (CUDA and CPU)."""
    params = {id(p): p for p in model.parameters() if p.requires_grad}.values()
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, cfg.beta2), fused=True)


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train one model; returns the run's summary (also written to out/summary.json)."""
    # Device and processes.
    rank, world = distributed()
    main = rank == 0
    device = pick_device(cfg.device, rank, world)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    enable_tf32(device)
    log = print if main else (lambda *_: None)
    malloc = keep_freed_memory(device)

    # Data and model.
    meta = _prepared_meta(cfg, world, main, log)
    overrides = {"vocab_size": meta["vocab_size"], **cfg.overrides}
    if cfg.kind == "bengio":
        overrides.setdefault("pad_id", meta["end_of_text_id"])
    torch.manual_seed(cfg.seed)  # same initial weights on every rank
    model = build_model(preset(cfg.kind, cfg.preset, **overrides)).to(device)
    optimizer = make_optimizer(model, cfg, device)
    train_tokens = torch.as_tensor(data.load_split(cfg.data, "train"), device=device)
    val_tokens = data.load_split(cfg.data, "validation")
    batches = Batches(
        train_tokens,
        model.block_size,
        cfg.batch_size,
        model.context_size,
        cfg.seed + rank,
        cfg.text_starts,
        meta["end_of_text_id"],
        line_end_ids(cfg.data) if cfg.text_starts else None,
    )

    # Where to start: a fresh run folder, or the last checkpoint of this one.
    last_dir, best_dir = cfg.out / "last", cfg.out / "best"
    metrics_path = cfg.out / "metrics.jsonl"
    progress, history = resume(cfg, model, optimizer, batches, device, rank, main, log)

    runner: torch.nn.Module = torch.compile(model, mode=cfg.compile) if cfg.compile else model
    if world > 1:
        runner = torch.nn.parallel.DistributedDataParallel(
            runner, device_ids=[device.index] if device.type == "cuda" else None
        )
    precision = resolve_precision(cfg.precision, device)
    if precision == "bf16" and device.type == "cpu" and not cpu_has_bf16():
        log(
            "warning: this CPU has no bf16 instructions (AVX512-BF16 or AMX), so bf16 runs "
            "emulated, far slower than fp32; --precision auto chooses fp32 here"
        )
    autocast = autocast_for(device, precision)
    tokens_per_step = cfg.batch_size * model.block_size * world
    n_params = parameter_count(model)
    log(
        f"{cfg.kind}/{cfg.preset}: {n_params:,} parameters on {hardware(device)}"
        f"{f' x{world} processes' if world > 1 else ''}, {tokens_per_step:,} tokens per step, "
        f"{precision}"
    )
    if device.type == "cpu":
        log(malloc)
    info = run_info(cfg, meta, device, world, precision)

    def save_last_step(saved: dict[str, Any]) -> None:
        save_last(last_dir, model, optimizer, batches, world, progress, saved)

    def checkpoint_meta() -> dict[str, Any]:
        return {**info, "step": progress.step, "tokens_seen": progress.tokens_seen}

    # SIGTERM (`kill`, a container or a session stopping) ends the run at the end of the current
    # step with its last checkpoint saved there, without validating, so that nothing is lost.
    terminated = threading.Event()
    previous_handler = None
    if world == 1 and threading.current_thread() is threading.main_thread():
        previous_handler = signal.signal(signal.SIGTERM, lambda *_: terminated.set())

    # The loop: a step, and at log points (the only host synchronisations) progress, the time
    # budget and validation.
    total_steps = cfg.max_steps
    bar = tqdm(
        total=total_steps,
        initial=progress.step,
        disable=not (main and cfg.progress),
        unit="step",
        dynamic_ncols=True,
    )
    loss_sum = torch.zeros((), device=device)
    loss_steps, window_start, window_tokens = 0, time.perf_counter(), 0
    started = time.perf_counter() - progress.elapsed
    stop = False
    records = 0
    runner.train()
    while progress.step < total_steps and not stop:
        lr = learning_rate(progress.step, total_steps, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss_sum += training_step(runner, model, optimizer, batches(), autocast, cfg.grad_clip)
        loss_steps += 1
        progress.step += 1
        progress.tokens_seen += tokens_per_step
        window_tokens += tokens_per_step
        step = progress.step
        if terminated.is_set():
            progress.elapsed = time.perf_counter() - started
            save_last_step(checkpoint_meta())
            bar.close()
            signal.signal(signal.SIGTERM, previous_handler)
            log(f"\nterminated: {last_dir} holds step {step}; --resume goes on from there")
            raise SystemExit(128 + signal.SIGTERM)
        leaving = cfg.stop_at is not None and step >= cfg.stop_at
        at_eval = step % cfg.eval_interval == 0 or step == total_steps or leaving
        if cfg.save_interval and step % cfg.save_interval == 0 and not at_eval:
            # Between validations, for runs that can be killed outright (SIGKILL, a machine
            # going away): the state of this step, without validating, as on SIGTERM.
            progress.elapsed = time.perf_counter() - started
            if main:
                save_last_step(checkpoint_meta())
            else:
                gather_generators(batches.generator, world)
        if step % cfg.log_interval and not at_eval:
            continue
        train_loss = loss_sum.item() / loss_steps
        now = time.perf_counter()
        rate = window_tokens / max(now - window_start, 1e-9)
        progress.elapsed = now - started
        if cfg.time_budget is not None and records > 0:  # the first window is warm-up
            total_steps = _steps_within_budget(cfg, progress, rate / tokens_per_step, world, device)
            bar.total = total_steps
        records += 1
        bar.update(step - bar.n)
        bar.set_postfix(loss=f"{train_loss:.3f}", tok_s=f"{rate:,.0f}", lr=f"{lr:.2e}")
        record: dict[str, Any] = {
            "step": step,
            "tokens": progress.tokens_seen,
            "elapsed": round(progress.elapsed, 2),
            "lr": lr,
            "train_loss": train_loss,
            "tokens_per_s": round(rate, 1),
        }
        loss_sum.zero_()
        loss_steps, window_start, window_tokens = 0, time.perf_counter(), 0
        if at_eval or step >= total_steps:
            if main:
                record["val_loss"] = val_loss = _validate(model, val_tokens, cfg, device)
                improved = val_loss < progress.best_val
                if improved:
                    progress.best_val, progress.stale = val_loss, 0
                else:
                    progress.stale += 1
                saved = {
                    **checkpoint_meta(),
                    "training_seconds": round(progress.elapsed, 1),
                    "val_loss": val_loss,
                }
                if improved:
                    save_checkpoint(best_dir, model, saved)
                save_last_step(saved)
                stop = leaving or (cfg.patience is not None and progress.stale >= cfg.patience)
                if stop and not leaving:
                    log(f"\nearly stop at step {step}: {progress.stale} evaluations, none better")
            else:
                record["val_loss"] = 0.0
                gather_generators(batches.generator, world)
                stop = leaving
            if world > 1:
                flag = torch.tensor([int(stop)], device=device)
                dist.broadcast(flag, 0)
                stop = bool(flag.item())
            window_start = time.perf_counter()  # validation time is not training throughput
        if main:
            history.append(record)
            with metrics_path.open("a") as handle:
                handle.write(json.dumps(record) + "\n")
    bar.close()
    if previous_handler is not None:
        signal.signal(signal.SIGTERM, previous_handler)

    # The run's summary, and the processes' group taken down.
    summary: dict[str, Any] = {}
    if main:
        summary = write_summary(
            cfg, history, n_params, progress, started, info["hardware"], precision
        )
        log(json.dumps(summary, indent=2))
    if world > 1:
        dist.barrier()
        # DDP's reducer holds the group's last pieces of gloo work, and DDP sits in reference
        # cycles that only the garbage collector frees: left alone, it is freed at interpreter
        # exit, after the group, and gloo can abort the process there (seen once in CI: rank 1
        # "terminate called without an active exception", SIGABRT). Free it first.
        del runner
        gc.collect()
        dist.destroy_process_group()
    return summary


def _prepared_meta(cfg: TrainConfig, world: int, main: bool, log) -> dict[str, Any]:
    """The prepared data's metadata, rank 0 preparing it from the corpus where it is missing."""
    meta = data.ensure_prepared(cfg.data, cfg.corpus, log=log) if main else None
    if world > 1:
        dist.barrier()  # rank 0 prepared the data
    return meta if meta is not None and world == 1 else data.load_meta(cfg.data)


def _validate(model: torch.nn.Module, val_tokens, cfg: TrainConfig, device: torch.device) -> float:
    """Mean NLL per token over the validation split (or its first eval_windows windows)."""
    nll, count = stream_nll(
        model, val_tokens, model.block_size, max(8, cfg.batch_size), cfg.eval_windows, device
    )
    return nll / count


def _steps_within_budget(
    cfg: TrainConfig, progress: Progress, steps_per_s: float, world: int, device: torch.device
) -> int:
    """The step at which the schedule ends so that it ends when the time budget does, at the
    rate measured (at most max_steps; every rank takes rank 0's)."""
    left = max(0.0, cfg.time_budget - progress.elapsed)
    estimate = min(cfg.max_steps, max(progress.step, progress.step + int(left * steps_per_s)))
    if world > 1:
        shared = torch.tensor([estimate], device=device)
        dist.broadcast(shared, 0)
        estimate = int(shared.item())
    return estimate
