"""The course notebook's table: one self-attention layer, loops vs matrix vs fused.

Times one forward batch of the whole layer (WQ, WK, WV, the attention core, WO) with each
implementation on the same weights and input, and the largest difference between their outputs.
"""

from __future__ import annotations

import platform
import statistics
import time

import torch

from training.attention import IMPLEMENTATIONS, CausalSelfAttention


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
        "device": torch.cuda.get_device_name(dev)
        if dev.type == "cuda"
        else f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads",
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
