"""One decode step of the attention model in-process: decoder.onnx against the cache slots.

decoder.onnx takes the stacked caches of a batch and returns them one token longer (the copies
of every step); the slot graph (runtime/decode_graph.py) writes the new keys and values into
buffers bound in place. Each is timed for one new token after 64 cached ones, at batches of 1,
8 and 32 sequences, float32, and the slot graph also with 8-bit block weights (the int8 mode).
No HTTP, no sampling: the graph calls alone, alternating, 2 threads.

With ``--http``, the served engine instead: the service with cache slots (MACHADO_KV_SLOTS=16,
the default) against the same service generating through decoder.onnx (MACHADO_KV_SLOTS=0, as
before the slots), float32 and int8, in alternating rounds of bench llama-server's load (a
32-token prompt, 64 greedy new tokens through /v1/completions, 1, 8 and 32 clients).

    python -m bench slots --json benchmarks/slots-cpu.json
    python -m bench slots --http --json benchmarks/slots-http-cpu.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from bench.common import MODELS, cpu_name, write_figures
from runtime.batching import decode_feed
from runtime.decode_graph import build_decode_graph
from runtime.quantize import block_int8
from runtime.slots import SlotCache

BATCHES = (1, 8, 32)
PAST = 64


def session(source, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models-dir", type=Path, default=MODELS)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=50, help="timed steps per round (50)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (3)")
    parser.add_argument("--http", action="store_true", help="the served engine, slots or not")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args(argv)
    if args.http:
        return served(args)

    folder = args.models_dir / "attention"
    config = json.loads((folder / "card.json").read_text())["config"]
    layers, heads = int(config["n_layer"]), int(config["n_head"])
    head_dim = int(config["d_model"]) // heads
    graph = build_decode_graph(folder / "model.onnx", config)
    sessions = {
        "decoder.onnx": session(str(folder / "decoder.onnx"), args.threads),
        "slots, float32": session(graph, args.threads),
        "slots, int8 blocks": session(block_int8(graph), args.threads),
    }
    rng = np.random.default_rng(0)
    steppers = {}
    for rows in BATCHES:
        past = rng.standard_normal((layers, rows, heads, PAST, head_dim)).astype(np.float32)
        feed = decode_feed(np.full((rows, 1), 5), past, past.copy())
        decoder = sessions["decoder.onnx"]
        steppers[("decoder.onnx", rows)] = lambda d=decoder, f=feed: d.run(None, f)
        for name in ("slots, float32", "slots, int8 blocks"):
            cache = SlotCache(sessions[name], rows, config)
            cache.step(list(range(rows)), [[0, *rng.integers(1, 8192, PAST - 1).tolist()]] * rows)

            def step(c=cache, n=rows):
                c.step(list(range(n)), [[5]] * n)
                c.lengths[:n] = PAST  # the same step again, not a longer one

            steppers[(name, rows)] = step
    samples = {key: [] for key in steppers}
    for _ in range(args.rounds):
        for key, step in steppers.items():
            for _ in range(5):
                step()
            started = time.perf_counter()
            for _ in range(args.steps):
                step()
            samples[key].append(1000 * (time.perf_counter() - started) / args.steps)
    table = {
        name: {str(rows): round(statistics.median(samples[(name, rows)]), 2) for rows in BATCHES}
        for name in sessions
    }
    result = {"cpu": cpu_name(), "threads": args.threads, "past_tokens": PAST, "step_ms": table}
    write_figures(result, args.json)
    print("| graph | " + " | ".join(f"batch {r}: ms a step" for r in BATCHES) + " |")
    print("|---|" + "---|" * len(BATCHES))
    for name, row in table.items():
        print(f"| {name} | " + " | ".join(f"{row[str(r)]:.2f}" for r in BATCHES) + " |")


def served(args: argparse.Namespace) -> None:
    """Tokens per second of the service with and without cache slots, in alternating rounds."""
    from bench.common import start_server
    from bench.llama_server import CLIENTS, alternate, prompts

    setups = {
        f"{quantize}, {'slots' if slots else 'decoder.onnx'}": {
            "MACHADO_KV_SLOTS": str(slots),
            "MACHADO_QUANTIZE": quantize,
            "MACHADO_THREADS": str(args.threads),
        }
        for quantize in ("none", "int8")
        for slots in (16, 0)
    }
    servers, procs = {}, []
    try:
        for name, env in setups.items():
            base, proc = start_server(env, models_dir=args.models_dir)
            servers[name] = base
            procs.append(proc)
        texts = prompts()
        served_by = {name: (base, "service") for name, base in servers.items()}
        runs = alternate(served_by, CLIENTS, args.rounds, lambda c: max(2, 16 // c), texts)
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(30)
    table = {
        name: {
            c: {
                k: statistics.median(f[k] for f in runs[name][c])
                for k in ("tokens_per_s", "p99_ms")
            }
            for c in runs[name]
        }
        for name in setups
    }
    write_figures({"cpu": cpu_name(), "tokens_per_s": table, "rounds": runs}, args.json)
    print("| engine | " + " | ".join(f"{c} clients: tokens/s (p99 ms)" for c in CLIENTS) + " |")
    print("|---|" + "---|" * len(CLIENTS))
    for name, row in table.items():
        cells = " | ".join(
            f"{row[str(c)]['tokens_per_s']:.0f} ({row[str(c)]['p99_ms']:.0f})" for c in CLIENTS
        )
        print(f"| {name} | {cells} |")
