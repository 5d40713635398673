"""The course notebook's table: one self-attention layer, loops vs matrix vs fused.

Times one forward batch of the whole layer (WQ, WK, WV, the attention core, WO) with each
implementation on the same weights and input, and the largest difference between their outputs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from bench.common import MODELS, write_figures
from runtime.hardware import cpu_label
from training.attention import IMPLEMENTATIONS, CausalSelfAttention
from training.checkpoint import preset, torch_model_from_folder
from training.flags import add_precision_arg, non_negative, positive


def _time_ms(fn, repeats: int, device: torch.device) -> float:
    """Median wall time of ``fn`` in milliseconds, after one warm-up call."""
    fn()
    samples = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


@torch.no_grad()
def bench_attention(
    batch: int = 32,
    steps: int = 32,
    d_model: int = 128,
    n_head: int = 1,
    loop_repeats: int = 3,
    repeats: int = 100,
    device: str | None = None,
    seed: int = 0,
) -> dict:
    """ms per batch of each implementation, speed-ups over the loops, max absolute differences."""
    from training.device import hardware

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(seed)
    layer = CausalSelfAttention(d_model, n_head).to(dev).eval()
    x = torch.randn(batch, steps, d_model, device=dev)
    outputs, timings = {}, {}
    for name in IMPLEMENTATIONS:
        layer.implementation = name
        outputs[name], _ = layer(x)
        timings[name] = _time_ms(
            lambda: layer(x), loop_repeats if name == "loops" else repeats, dev
        )
    diff = {
        f"{a}_vs_{b}": float((outputs[a] - outputs[b]).abs().max())
        for a, b in (("loops", "matrix"), ("loops", "fused"), ("matrix", "fused"))
    }
    return {
        "shape": {"batch": batch, "steps": steps, "d_model": d_model, "n_head": n_head},
        "device": hardware(dev),
        "torch": torch.__version__,
        "ms_per_batch": timings,
        "speedup_over_loops": {
            name: timings["loops"] / timings[name] for name in IMPLEMENTATIONS if name != "loops"
        },
        "max_abs_difference": diff,
    }


def format_table(result: dict) -> str:
    ms, speed = result["ms_per_batch"], result["speedup_over_loops"]
    lines = [
        f"self-attention forward, {result['shape']} on {result['device']}",
        f"{'implementation':<16}{'ms / batch':>12}{'speed-up':>12}",
    ]
    for name in IMPLEMENTATIONS:
        factor = "1x" if name == "loops" else f"{speed[name]:,.0f}x"
        lines.append(f"{name:<16}{ms[name]:>12.3f}{factor:>12}")
    lines.append(
        "max |difference|: "
        + ", ".join(f"{k} {v:.2e}" for k, v in result["max_abs_difference"].items())
    )
    return "\n".join(lines)


def bench_train(
    kind: str = "attention",
    preset_name: str = "base",
    batch_size: int = 64,
    compile_mode: str | None = None,
    steps: int = 50,
    warmup: int = 10,
    device: str | None = None,
    profile: bool = False,
    seed: int = 0,
    precision: str = "auto",
    keep_memory: bool = True,
) -> dict:
    """Training throughput of one preset on random tokens: tokens/s and ms per step.

    The steps are the training loop's own (``training.train.training_step``): same optimizer,
    autocast, clipping, and on a CPU the same allocator setting (``keep_memory``: see
    ``training.device.keep_freed_memory``; False leaves glibc's defaults, for comparison, and
    only in a fresh process means them); the batches are random ids already on the device.
    ``compile_mode`` is None (eager) or a ``torch.compile`` mode ("default", ...).
    """
    from training.checkpoint import build_model, parameterpositive, preset
    from training.device import (
        autocast_for,
        enable_tf32,
        hardware,
        keep_freed_memory,
        resolve_precision,
    )
    from training.train import TrainConfig, make_optimizer, training_step

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    enable_tf32(dev)
    malloc = keep_freed_memory(dev) if keep_memory else "malloc: defaults left (--malloc default)"
    torch.manual_seed(seed)
    model = build_model(preset(kind, preset_name)).to(dev)
    optimizer = make_optimizer(model, TrainConfig(), dev)
    runner = model if compile_mode is None else torch.compile(model, mode=compile_mode)
    precision = resolve_precision(precision, dev)
    autocast = autocast_for(dev, precision)
    vocab, length = model.config.vocab_size, model.block_size
    batches = [
        (
            torch.randint(0, vocab, (batch_size, length), device=dev),
            torch.randint(0, vocab, (batch_size, length), device=dev),
        )
        for _ in range(4)
    ]

    def run(count: int) -> None:
        for i in range(count):
            training_step(runner, model, optimizer, batches[i % 4], autocast, 1.0)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    started = time.perf_counter()
    run(warmup)
    sync()
    warmup_s = time.perf_counter() - started
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    started = time.perf_counter()
    run(steps)
    sync()
    elapsed = time.perf_counter() - started
    result = {
        "kind": kind,
        "preset": preset_name,
        "parameters": parameterpositive(model),
        "batch_size": batch_size,
        "sequence": length,
        "compile": compile_mode,
        "precision": precision,
        "device": hardware(dev),
        "torch": torch.__version__,
        "warmup_steps": warmup,
        "warmup_seconds": warmup_s,
        "steps": steps,
        "ms_per_step": elapsed / steps * 1000,
        "tokens_per_s": steps * batch_size * length / elapsed,
        "peak_memory_gib": (
            torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None
        ),
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "malloc": malloc,
    }
    if profile:
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as torch_profile

        activities = [ProfilerActivity.CPU] + (
            [ProfilerActivity.CUDA] if dev.type == "cuda" else []
        )
        with torch_profile(activities=activities) as prof:
            run(5)
            sync()
        sort = "cuda_time_total" if dev.type == "cuda" else "cpu_time_total"
        result["profile"] = prof.key_averages().table(sort_by=sort, row_limit=25)
    return result


@torch.no_grad()
def bench_inference(
    models_dir,
    names: list[str],
    lengths: list[int],
    threads: int = 2,
    repeats: int = 50,
    seed: int = 0,
) -> dict:
    """Batch 1, logits at every position: ONNX Runtime (the shipped graph) against PyTorch eager
    (the same weights), on the CPU with the same number of threads; the max difference too."""
    rng = torch.Generator().manual_seed(seed)
    with _torch_threads(threads):
        rows = _inference_rows(models_dir, names, lengths, threads, repeats, rng)
    for row in rows:
        row["speedup"] = row["pytorch_ms"] / row["onnxruntime_ms"]
    import onnxruntime

    return {
        "threads": threads,
        "repeats": repeats,
        "cpu": cpu_label(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "rows": rows,
    }


@contextlib.contextmanager
def _torch_threads(threads: int) -> Iterator[None]:
    """torch's intra-op threads set to ``threads`` for a while: a caller in the same process
    (the test suite's later trainings) keeps its own count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _inference_rows(models_dir, names, lengths, threads, repeats, rng) -> list[dict]:
    from pathlib import Path

    from runtime.loader import open_model

    rows = []
    for name in names:
        folder = Path(models_dir) / name
        ort_model = open_model(folder, threads)
        torch_model = torch_model_from_folder(folder)
        vocab = ort_model.card["config"]["vocab_size"]
        for length in lengths:
            if length > ort_model.context and ort_model.card["kind"] == "attention":
                continue
            ids = torch.randint(0, vocab, (1, length), generator=rng)
            ids_np = ids.numpy()
            expected = torch_model(ids)[0].numpy()
            got = ort_model.logits(ids_np)
            rows.append(
                {
                    "model": name,
                    "parameters": ort_model.card["parameters"],
                    "tokens": length,
                    "onnxruntime_ms": _time_ms(
                        lambda m=ort_model, x=ids_np: m.logits(x), repeats, torch.device("cpu")
                    ),
                    "pytorch_ms": _time_ms(
                        lambda m=torch_model, x=ids: m(x), repeats, torch.device("cpu")
                    ),
                    "max_abs_diff": float(abs(got - expected).max()),
                }
            )
    return rows


def format_inference_table(result: dict) -> str:
    lines = [
        "| model | tokens | ONNX Runtime | PyTorch eager | speed-up | max \\|diff\\| |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| `{r['model']}` ({r['parameters'] / 1e6:.1f} M) | {r['tokens']} "
            f"| {r['onnxruntime_ms']:.2f} ms | {r['pytorch_ms']:.2f} ms | {r['speedup']:.1f}× "
            f"| {r['max_abs_diff']:.1e} |"
        )
    return "\n".join(lines)


def check_preset(kind: str, name: str) -> None:
    """The preset's config built before anything runs: one that cannot train ends the command
    with its reason."""
    try:
        preset(kind, name)
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None


def _parser(name: str, description: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog=f"python -m bench {name}", description=description)


def attention_main(argv: list[str] | None = None) -> None:
    """The notebook's table: self-attention by loops, matrix products and the fused kernel."""
    p = _parser("attention", "loops vs matrix vs fused self-attention (torch)")
    p.add_argument("--batch", type=positive, default=32, help="B (32)")
    p.add_argument("--steps", type=positive, default=32, help="T (32)")
    p.add_argument("--d-model", type=positive, default=128, help="d (128)")
    p.add_argument("--heads", type=positive, default=1, help="heads (1)")
    p.add_argument("--repeats", type=positive, default=100, help="timed runs of matrix and fused")
    p.add_argument("--loop-repeats", type=positive, default=3, help="timed runs of the loops")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    p.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = p.parse_args(argv)
    result = bench_attention(
        args.batch,
        args.steps,
        args.d_model,
        args.heads,
        args.loop_repeats,
        args.repeats,
        args.device,
    )
    print(format_table(result))
    write_figures(result, args.json)


def inference_main(argv: list[str] | None = None) -> None:
    """ONNX Runtime against PyTorch eager on the shipped models, on the CPU."""
    p = _parser("inference", "ONNX Runtime vs PyTorch eager on the shipped models (CPU)")
    p.add_argument("--models", type=Path, default=MODELS, help="models folder")
    p.add_argument(
        "--model",
        dest="names",
        action="append",
        default=None,
        help="model to measure (repeatable; default: attention, bengio)",
    )
    p.add_argument(
        "--tokens",
        dest="lengths",
        type=positive,
        action="append",
        default=None,
        help="sequence length (repeatable; default: 16, 128, 256)",
    )
    p.add_argument("--threads", type=positive, default=2, help="threads for both (2)")
    p.add_argument("--repeats", type=positive, default=50, help="timed calls per figure (50)")
    p.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = p.parse_args(argv)
    result = bench_inference(
        args.models,
        args.names or ["attention", "bengio"],
        args.lengths or [16, 128, 256],
        args.threads,
        args.repeats,
    )
    print(format_inference_table(result))
    write_figures(result, args.json)


def train_main(argv: list[str] | None = None) -> None:
    """Training throughput of a preset, in tokens per second."""
    p = _parser("train", "training throughput of a preset (tokens/s)")
    p.add_argument("--model", choices=("attention", "bengio"), default="attention")
    p.add_argument("--preset", default="base", help="preset (base)")
    p.add_argument("--batch-size", type=positive, default=64, help="sequences per step (64)")
    p.add_argument(
        "--compile",
        dest="compile_mode",
        default=None,
        nargs="?",
        const="default",
        help="torch.compile, optionally with a mode (max-autotune-no-cudagraphs, ...)",
    )
    p.add_argument("--steps", type=positive, default=50, help="timed steps (50)")
    p.add_argument("--warmup", type=non_negative, default=10, help="untimed steps first (10)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    add_precision_arg(p)
    p.add_argument("--profile", action="store_true", help="add a profiler table of 5 steps")
    p.add_argument(
        "--malloc",
        choices=("keep", "default"),
        default="keep",
        help="on a CPU: keep freed memory for the next step, as train does (keep), or leave "
        "glibc's defaults (default), to compare",
    )
    p.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = p.parse_args(argv)
    check_preset(args.model, args.preset)
    result = bench_train(
        args.model,
        args.preset,
        args.batch_size,
        args.compile_mode,
        args.steps,
        args.warmup,
        args.device,
        args.profile,
        precision=args.precision,
        keep_memory=args.malloc == "keep",
    )
    table = result.pop("profile", None)
    print(json.dumps(result, indent=2))
    if table:
        print(table)
        result["profile"] = table
    write_figures(result, args.json)
