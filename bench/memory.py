"""What the shipped graphs' ONNX Runtime sessions hold in memory as input shapes vary (not a test).

The service's graphs see a different input shape at nearly every call: batches of 1 to
max-batch-rows rows, windows of 1 to the context, caches of every length. This runs each hot
graph of the shipped models on the CPU provider, with the service's session options and with
ONNX Runtime's memory pattern planner and CPU arena turned on or off, in four passes of random
shapes:

- A: N shapes;  A again: the same N;  B: N shapes A did not have;  A+B: all 2N again.

and records the process's resident memory after each pass and the seconds each pass took: what
a setting holds once it has met a set of shapes, whether memory still grows when the same shapes
come again (the memory pattern planner pre-allocates a shape's plan the second time it sees it),
and whether new shapes still add to it. Each setting runs in a fresh process.

    python -m bench memory --json benchmarks/memory-cpu.json
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bench.common import MODELS, ROOT, cpu_name, write_figures
from runtime.batching import decode_feed

# (model folder, graph, workload): the graph calls that take most of the service's traffic.
WORKLOADS = [
    ("attention", "model.onnx", "window"),  # /next-token, /generate without cache, batched
    ("attention", "decoder.onnx", "decode"),  # /generate's key/value cache steps, batched
    ("bengio", "model.onnx", "window"),
]
SETUPS = {
    "service": None,  # registry.session_options as the service builds them
    "mem_pattern on, arena on (ONNX Runtime's defaults)": (True, True),
    "mem_pattern off, arena off": (False, False),
}


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def shape_space(workload: str, context: int, rows: int) -> list[tuple[int, ...]]:
    """Every input shape the service can send: (rows, window) or (rows, new tokens, cached)."""
    if workload == "window":
        return [(b, n) for b in range(1, rows + 1) for n in range(1, context + 1)]
    return [
        (b, n, past)
        for b in range(1, rows + 1)
        for n in range(1, 5)
        for past in range(0, context - n + 1)
    ]


def feed(
    session, workload: str, shape: tuple[int, ...], vocab: int, rng: np.random.Generator
) -> dict:
    if workload == "window":
        rows, length = shape
        ids = rng.integers(0, vocab, (rows, length), dtype=np.int64)
        return {"input_ids": ids, "positions": np.full((rows, 1), length - 1, dtype=np.int64)}
    rows, new, past = shape
    layers, _, heads, _, dim = session.get_inputs()[2].shape
    cache = rng.standard_normal((layers, rows, heads, past, dim), dtype=np.float32)
    return decode_feed(rng.integers(0, vocab, (rows, new), dtype=np.int64), cache, cache.copy())


def worker(folder: Path, graph: str, workload: str, setup: str, shapes: int, rows: int) -> dict:
    """One setting in this process: load the graph, run the four passes, report memory."""
    import onnxruntime as ort

    from runtime.loader import session_options
    from runtime.options import LoadOptions

    options = session_options(LoadOptions(models_dir=folder.parent, threads=2, thread_spin_us=50))
    if SETUPS[setup] is not None:
        options.enable_mem_pattern, options.enable_cpu_mem_arena = SETUPS[setup]
    before = rss_mib()
    session = ort.InferenceSession(str(folder / graph), options, providers=["CPUExecutionProvider"])
    card = json.loads((folder / "card.json").read_text())
    space = shape_space(workload, int(card["context"]), rows)
    vocab = int(card["config"]["vocab_size"])
    picked = random.Random(0).sample(space, min(2 * shapes, len(space)))
    first, second = picked[: len(picked) // 2], picked[len(picked) // 2 :]
    rng = np.random.default_rng(0)
    result = {
        "mem_pattern": options.enable_mem_pattern,
        "cpu_arena": options.enable_cpu_mem_arena,
        "distinct_shapes": {"A": len(first), "B": len(second), "possible": len(space)},
        "rss_mib": {"before_load": round(before, 1), "loaded": round(rss_mib(), 1)},
        "seconds": {},
    }
    for name, batch in [("A", first), ("A again", first), ("B", second), ("A+B", picked)]:
        start = time.perf_counter()
        for shape in batch:
            session.run(None, feed(session, workload, shape, vocab, rng))
        result["seconds"][name] = round(time.perf_counter() - start, 2)
        result["rss_mib"][name] = round(rss_mib(), 1)
    memory = result["rss_mib"]
    result["growth_mib"] = {
        "same shapes again": round(memory["A again"] - memory["A"], 1),
        "new shapes": round(memory["B"] - memory["A again"], 1),
        "all shapes again": round(memory["A+B"] - memory["B"], 1),
    }
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=MODELS)
    parser.add_argument("--shapes", type=int, default=150, help="distinct shapes in A and in B")
    parser.add_argument("--rows", type=int, default=16, help="largest batch (max_batch_rows)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--worker", nargs=4, metavar=("FOLDER", "GRAPH", "WORKLOAD", "SETUP"))
    args = parser.parse_args(argv)
    if args.worker:
        folder, graph, workload, setup = args.worker
        print(json.dumps(worker(Path(folder), graph, workload, setup, args.shapes, args.rows)))
        return
    import onnxruntime as ort

    runs = []
    for name, graph, workload in WORKLOADS:
        for setup in SETUPS:
            command = [
                sys.executable, "-m", "bench", "memory",
                "--shapes", str(args.shapes), "--rows", str(args.rows),
                "--worker", str(args.models / name), graph, workload, setup,
            ]  # fmt: skip
            out = subprocess.run(
                command, check=True, capture_output=True, text=True, cwd=ROOT
            ).stdout
            run = {"model": name, "graph": graph, "workload": workload, "setup": setup}
            run |= json.loads(out.splitlines()[-1])
            runs.append(run)
            print(
                f"{name}/{graph} {setup}: growth {run['growth_mib']}, "
                f"RSS {run['rss_mib']}, s {run['seconds']}",
                flush=True,
            )
    write_figures(
        {
            "cpu": cpu_name(),
            "onnxruntime": ort.__version__,
            "threads": 2,
            "runs": runs,
        },
        args.json,
    )
