"""The course notebook's table: one self-attention layer, loops vs matrix vs fused.

Times one forward batch of the whole layer (WQ, WK, WV, the attention core, WO) with each
implementation on the same weights and input, and the largest difference between their outputs.
"""

from __future__ import annotations

import contextlib
import resource
import statistics
import time
from collections.abc import Iterator

import torch

from training.attention import IMPLEMENTATIONS, CausalSelfAttention
from training.device import cpu_label


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
    from training.checkpoint import build_model, parameter_count, preset
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
        "parameters": parameter_count(model),
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


def torch_model_from_folder(folder) -> torch.nn.Module:
    """The PyTorch model of an exported model folder, its weights read back from the ONNX graph
    (float16-stored weights come back as the float32 the graph computes with)."""
    import json
    from pathlib import Path

    import onnx
    from onnx import numpy_helper

    from training.attention_lm import AttentionConfig, AttentionLM
    from training.bengio import BengioConfig, BengioLM

    folder = Path(folder)
    card = json.loads((folder / "card.json").read_text())
    if card["kind"] == "attention":
        model = AttentionLM(AttentionConfig(**card["config"]))
    else:
        model = BengioLM(BengioConfig(**card["config"]))
    graph = onnx.load(str(folder / "model.onnx")).graph
    state = {}
    for init in graph.initializer:
        name = init.name.removesuffix("__fp16").removeprefix("model.")
        state[name] = torch.from_numpy(numpy_helper.to_array(init).astype("float32"))
    if card["kind"] == "attention":  # the head is tied to the embedding: either name holds it
        tied = state.get("token_embedding.weight", state.get("head.weight"))
        if tied is not None:
            state["token_embedding.weight"] = state["head.weight"] = tied
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or missing:
        raise ValueError(f"{folder}: weights missing {missing}, unexpected {unexpected}")
    return model.eval()


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
