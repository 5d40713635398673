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
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from tqdm import tqdm

from training import data
from training.checkpoint import (
    build_model,
    load_checkpoint,
    parameter_count,
    preset,
    read_config,
    recover,
    save_checkpoint,
)
from training.device import (
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
from training.plot import plot_curves


@dataclass
class TrainConfig:
    kind: str = "attention"  # attention or bengio
    preset: str = "tiny"  # a preset of that kind
    overrides: dict[str, Any] = field(default_factory=dict)  # model config fields replaced
    out: Path = Path("runs/tiny")  # run folder: best/, last/, metrics.jsonl, curves.png
    data: Path = Path("data")  # prepared data folder
    corpus: str | None = None  # corpus folder, used where the data is not prepared yet
    batch_size: int = 32  # sequences per step (per process)
    lr: float = 1e-3  # peak learning rate
    min_lr_ratio: float = 0.1  # final learning rate / peak
    warmup_steps: int = 100  # linear warm-up
    max_steps: int = 1000  # step budget
    time_budget: float | None = None  # seconds; the schedule stretches to end there
    weight_decay: float = 0.1  # AdamW, on matrices only
    beta2: float = 0.95  # AdamW second-moment decay
    grad_clip: float = 1.0  # max gradient norm
    eval_interval: int = 200  # steps between validations
    save_interval: int | None = None  # steps between saves of out/last (None: at validations)
    eval_windows: int | None = None  # validation windows per evaluation (None: the whole split)
    patience: int | None = None  # evaluations without improvement before stopping
    log_interval: int = 20  # steps between progress updates
    seed: int = 1337  # seeds weights, dropout and batch sampling
    device: str | None = None  # cpu, cuda, cuda:1 ... (None: cuda if available)
    compile: str | None = None  # torch.compile mode ("default", "reduce-overhead"...); None: eager
    precision: str = "auto"  # bf16 (autocast), fp32, or auto: bf16 where the device has it
    stop_at: int | None = None  # leave off at this step, schedule unchanged (resume later)
    resume: bool = False  # continue from out/last
    progress: bool = True  # show a progress bar
    text_starts: float = 0.0  # share of windows that start a text: end-of-text, then a paragraph


def _git_commit() -> str | None:
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


def line_end_ids(data_dir: Path) -> torch.Tensor:
    """Ids of the prepared tokenizer's tokens whose text ends a line: a paragraph starts after
    each of them in the cleaned stream (paragraphs are joined by newlines)."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(Path(data_dir) / "tokenizer.json"))
    ends = [i for i in range(tokenizer.get_vocab_size()) if tokenizer.decode([i]).endswith("\n")]
    return torch.tensor(ends, dtype=torch.long)


def learning_rate(step: int, total: int, cfg: TrainConfig) -> float:
    """Linear warm-up to the peak, then cosine decay to min_lr_ratio of it at ``total``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + 0.5 * (cfg.lr - floor) * (1 + math.cos(math.pi * progress))


class Batches:
    """Random windows of the train stream, sampled on the device with a seeded generator.

    With ``text_starts`` > 0, that share of each batch's windows start a text as the service
    reads a prompt: end-of-text first, then the stream from the start of a paragraph (a position
    after a token that ends a line). Windows laid at random offsets alone put end-of-text at a
    window's start about once in every document (110 times in the training split), so a model
    would learn little of how a text begins (``python -m training starts`` measures it)."""

    def __init__(
        self,
        tokens: torch.Tensor,
        length: int,
        batch: int,
        context: int,
        seed: int,
        text_starts: float = 0.0,
        end_of_text: int = 0,
        line_ends: torch.Tensor | None = None,
    ):
        if len(tokens) <= length + 1:
            raise ValueError(f"train split has {len(tokens)} tokens, needs more than {length + 1}")
        self.tokens = tokens
        self.batch = batch
        self.offsets = torch.arange(length, device=tokens.device)  # (L,)
        self.generator = torch.Generator(device=tokens.device).manual_seed(seed)
        # A model that sees fewer tokens than the window: its first positions would only see a
        # window's truncated start, not the real text before it, so they are not trained on.
        self.blind = min(length, context - 1) if context < length else 0
        self.starting = round(text_starts * batch)
        self.end_of_text = end_of_text
        if self.starting:
            if line_ends is None:
                raise ValueError("text_starts needs the ids of the tokens that end a line")
            after = torch.isin(tokens[:-1], line_ends.to(tokens.device)).nonzero()[:, 0] + 1
            self.paragraphs = after[after < len(tokens) - length]  # (P,) where a text can start
            if len(self.paragraphs) == 0:
                raise ValueError("text_starts: the train split has no line end to start after")

    def __call__(self) -> tuple[torch.Tensor, torch.Tensor]:
        high = len(self.tokens) - len(self.offsets) - 1
        device = self.tokens.device
        plain = self.batch - self.starting
        starts = torch.randint(0, high, (plain, 1), device=device, generator=self.generator)
        x = self.tokens[starts + self.offsets]  # (B - S, L)
        y = self.tokens[starts + self.offsets + 1]  # (B - S, L)
        if self.blind:
            y = y.masked_fill((self.offsets < self.blind) & (starts > 0), -1)
        if not self.starting:
            return x, y
        picked = torch.randint(
            0, len(self.paragraphs), (self.starting,), device=device, generator=self.generator
        )
        text = self.paragraphs[picked][:, None] + self.offsets  # (S, L)
        # End-of-text, then the text: every position reads the text's real start, so the first
        # positions are trained on too (they are what a prompt's first tokens meet).
        eot = torch.full((self.starting, 1), self.end_of_text, device=device, dtype=x.dtype)
        x_text = torch.cat([eot, self.tokens[text[:, :-1]]], dim=1)  # (S, L)
        y_text = self.tokens[text]  # (S, L)
        return torch.cat([x, x_text]), torch.cat([y, y_text])


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
    rank, world = distributed()
    main = rank == 0
    device = pick_device(cfg.device, rank, world)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    enable_tf32(device)
    log = print if main else (lambda *_: None)
    malloc = keep_freed_memory(device)
    meta = data.ensure_prepared(cfg.data, cfg.corpus, log=log) if main else data.load_meta(cfg.data)
    if world > 1:
        dist.barrier()  # rank 0 prepared the data
        meta = data.load_meta(cfg.data)
    overrides = {"vocab_size": meta["vocab_size"], **cfg.overrides}
    if cfg.kind == "bengio":
        overrides.setdefault("pad_id", meta["end_of_text_id"])
    model_config = preset(cfg.kind, cfg.preset, **overrides)

    torch.manual_seed(cfg.seed)  # same initial weights on every rank
    model = build_model(model_config).to(device)
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

    step, tokens_seen, elapsed, best_val, stale = 0, 0, 0.0, float("inf"), 0
    history: list[dict[str, Any]] = []
    last_dir, best_dir = cfg.out / "last", cfg.out / "best"
    metrics_path = cfg.out / "metrics.jsonl"
    recover(last_dir)
    recover(best_dir)
    if cfg.resume and (last_dir / "train_state.pt").is_file():
        model.load_state_dict(load_checkpoint(last_dir, device).state_dict())
        state = torch.load(last_dir / "train_state.pt", map_location=device, weights_only=False)
        optimizer.load_state_dict(state["optimizer"])
        batches.generator.set_state(state["generators"][rank].to("cpu"))
        torch.set_rng_state(state["torch_rng"])
        step, tokens_seen, elapsed = state["step"], state["tokens_seen"], state["elapsed"]
        best_val, stale = state["best_val"], state["stale"]
        if metrics_path.is_file():
            history = [json.loads(line) for line in metrics_path.read_text().splitlines()]
            # Records past the checkpoint belong to steps that are trained again: drop them.
            history = [h for h in history if h["step"] <= step]
            if main:
                metrics_path.write_text("".join(json.dumps(h) + "\n" for h in history))
        log(f"resumed {cfg.out} at step {step}")
    elif main:
        cfg.out.mkdir(parents=True, exist_ok=True)
        metrics_path.write_text("")

    runner: torch.nn.Module = torch.compile(model, mode=cfg.compile) if cfg.compile else model
    if world > 1:
        runner = torch.nn.parallel.DistributedDataParallel(
            runner, device_ids=[device.index] if device.type == "cuda" else None
        )
    precision = resolve_precision(cfg.precision, device)
    if precision == "bf16" and device.type == "cpu" and not cpu_has_bf16():
        log(
            "warning: this CPU has no bf16 instructions (AVX512-BF16 or AMX), so bf16 runs "
            "emulated, far slower than fp32 (65x on an AVX2 EPYC: BENCHMARKS.md); "
            "--precision auto chooses fp32 here"
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
    run_info = {
        "kind": cfg.kind,
        "preset": cfg.preset,
        "train_config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()},
        "tokenizer_sha256": meta["tokenizer_sha256"],
        "data": {"corpus": meta["corpus"], "splits": meta["splits"]},
        "hardware": hardware(device) + (f" x{world}" if world > 1 else ""),
        "precision": precision,
        "git_commit": _git_commit(),
        "command": "python -m training " + " ".join(sys.argv[1:]),
    }

    def validate() -> float:
        nll, count = stream_nll(
            model, val_tokens, model.block_size, max(8, cfg.batch_size), cfg.eval_windows, device
        )
        return nll / count

    def save_last(summary_meta: dict[str, Any]) -> None:
        """The checkpoint a resumed run starts from: weights, optimizer, random states."""
        save_checkpoint(
            last_dir,
            model,
            summary_meta,
            {
                "optimizer": optimizer.state_dict(),
                "generators": _gather_generators(batches.generator, world),
                "torch_rng": torch.get_rng_state(),
                "step": step,
                "tokens_seen": tokens_seen,
                "elapsed": elapsed,
                "best_val": best_val,
                "stale": stale,
            },
        )

    # SIGTERM (`kill`, a container or a session stopping) ends the run at the end of the current
    # step with its last checkpoint saved there, without validating, so that nothing is lost.
    terminated = threading.Event()
    previous_handler = None
    if world == 1 and threading.current_thread() is threading.main_thread():
        previous_handler = signal.signal(signal.SIGTERM, lambda *_: terminated.set())

    total_steps = cfg.max_steps
    bar = tqdm(
        total=total_steps,
        initial=step,
        disable=not (main and cfg.progress),
        unit="step",
        dynamic_ncols=True,
    )
    loss_sum = torch.zeros((), device=device)
    loss_steps, window_start, window_tokens = 0, time.perf_counter(), 0
    started = time.perf_counter() - elapsed
    stop = False
    record_count = 0
    runner.train()
    while step < total_steps and not stop:
        lr = learning_rate(step, total_steps, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss_sum += training_step(runner, model, optimizer, batches(), autocast, cfg.grad_clip)
        loss_steps += 1
        step += 1
        tokens_seen += tokens_per_step
        window_tokens += tokens_per_step
        if terminated.is_set():
            elapsed = time.perf_counter() - started
            save_last({**run_info, "step": step, "tokens_seen": tokens_seen})
            bar.close()
            signal.signal(signal.SIGTERM, previous_handler)
            log(f"\nterminated: {cfg.out / 'last'} holds step {step}; --resume goes on from there")
            raise SystemExit(128 + signal.SIGTERM)
        leaving = cfg.stop_at is not None and step >= cfg.stop_at
        at_eval = step % cfg.eval_interval == 0 or step == total_steps or leaving
        if cfg.save_interval and step % cfg.save_interval == 0 and not at_eval:
            # Between validations, for runs that can be killed outright (SIGKILL, a machine or a
            # sitting ending): the state of this step, without validating, as on SIGTERM.
            elapsed = time.perf_counter() - started
            if main:
                save_last({**run_info, "step": step, "tokens_seen": tokens_seen})
            else:
                _gather_generators(batches.generator, world)
        if step % cfg.log_interval and not at_eval:
            continue
        # Host synchronisation points: progress, time budget, validation.
        train_loss = loss_sum.item() / loss_steps
        now = time.perf_counter()
        rate = window_tokens / max(now - window_start, 1e-9)
        elapsed = now - started
        first_window = record_count == 0  # compilation and warm-up: not the steady rate
        record_count += 1
        if cfg.time_budget is not None and not first_window:
            # Stretch or shrink the schedule so that it ends when the time budget does.
            steps_per_s = rate / tokens_per_step
            estimate = step + int(max(0.0, cfg.time_budget - elapsed) * steps_per_s)
            estimate = min(cfg.max_steps, max(step, estimate))
            if world > 1:
                shared = torch.tensor([estimate], device=device)
                dist.broadcast(shared, 0)
                estimate = int(shared.item())
            total_steps = estimate
            bar.total = total_steps
        bar.update(step - bar.n)
        bar.set_postfix(loss=f"{train_loss:.3f}", tok_s=f"{rate:,.0f}", lr=f"{lr:.2e}")
        record: dict[str, Any] = {
            "step": step,
            "tokens": tokens_seen,
            "elapsed": round(elapsed, 2),
            "lr": lr,
            "train_loss": train_loss,
            "tokens_per_s": round(rate, 1),
        }
        loss_sum.zero_()
        loss_steps, window_start, window_tokens = 0, time.perf_counter(), 0
        if at_eval or step >= total_steps:
            val_loss = validate() if main else 0.0
            record["val_loss"] = val_loss
            if main:
                improved = val_loss < best_val
                best_val, stale = (val_loss, 0) if improved else (best_val, stale + 1)
                summary_meta = {
                    **run_info,
                    "step": step,
                    "tokens_seen": tokens_seen,
                    "training_seconds": round(elapsed, 1),
                    "val_loss": val_loss,
                }
                if improved:
                    save_checkpoint(best_dir, model, summary_meta)
                save_last(summary_meta)
                stop = leaving or (cfg.patience is not None and stale >= cfg.patience)
                if stop and not leaving:
                    log(f"\nearly stop at step {step}: no improvement in {stale} evaluations")
            else:
                _gather_generators(batches.generator, world)
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
    summary: dict[str, Any] = {}
    if main:
        plot_curves(history, cfg.out / "curves.png", f"{cfg.kind}/{cfg.preset}")
        best = read_config(best_dir)
        summary = {
            "out": str(cfg.out),
            "best_checkpoint": str(best_dir),
            "parameters": n_params,
            "steps": step,
            "tokens_seen": tokens_seen,
            "training_seconds": round(time.perf_counter() - started, 1),
            "best_step": best["step"],
            "best_val_loss": best["val_loss"],
            "train_tokens_per_s": _mean_rate(history),
            "hardware": run_info["hardware"],
            "precision": precision,
        }
        summary["best_val_perplexity"] = math.exp(best["val_loss"])
        (cfg.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
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


def _gather_generators(generator: torch.Generator, world: int) -> list[torch.Tensor]:
    """Every rank's batch-sampling state, so a resumed run draws the batches it would have."""
    state = generator.get_state()
    if world == 1:
        return [state]
    gathered = [None] * world
    dist.all_gather_object(gathered, state)
    return gathered


def _mean_rate(history: list[dict[str, Any]]) -> float:
    """Mean training throughput, leaving out the first record (warm-up, compilation)."""
    rates = [h["tokens_per_s"] for h in history[1:]] or [h["tokens_per_s"] for h in history]
    return round(sum(rates) / len(rates), 1) if rates else 0.0
