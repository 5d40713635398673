"""Concurrent generations batched across requests, in-process (not a test).

For the attention model (steps through its key/value cache graph) and the Bengio model (steps
through model.onnx), through the service's engine on the CPU, no HTTP:

- a lone greedy generation of 64 new tokens, with batching off (max rows 1) and on (16, waiting
  up to 2 ms), the two runs interleaved so that drift of the machine hits both alike: what
  batching costs a request that has the model to itself;
- new tokens per second with 1 and 8 threads generating 32 tokens at a time in a loop, with
  batching off, on without waiting, and on with the batch waiting up to --wait-ms for the
  generations of the batch before it; and the mean rows per graph call. The setups take turns
  (--rounds), for the same reason.

Each thread's prompt differs, so the prompts and caches differ in length. Then next-token calls
per second from 8 threads on windows of 4 to 256 tokens (the attention model's model.onnx), with
batching off, on with every window padded into the batch, and on as shipped (a short window
stays out of a long batch). Also the cost of one attention-model call against its tokens
(``decoder.onnx`` reading a prompt, ``model.onnx`` a window; 1 to 128 tokens alone, a
least-squares line): the figure behind ``CALL_COST_TOKENS``, the padding a prompt or window may
add to join a batch. Writes JSON and prints a Markdown table.

    python -m bench batching --json benchmarks/batching-cpu.json
"""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path

import numpy as np

from bench.common import MODELS, cpu_name, percentiles, write_figures
from runtime.batching import decode_feed
from runtime.engine import Engine
from runtime.kv_cache import CachedContext
from runtime.loader import load_models
from runtime.results import GenerationRequest
from runtime.sampling import SamplingParams
from service.settings import Settings

GREEDY = SamplingParams(temperature=0.0)
PROMPT = "Capitu olhou para mim e disse que"


def lone(engines: dict[str, Engine], repeats: int) -> dict[str, dict]:
    """p50/p99 of one 64-token generation per engine, the engines taking turns."""
    samples: dict[str, list[float]] = {label: [] for label in engines}
    for repeat in range(repeats + 2):
        for label, engine in engines.items():
            start = time.perf_counter()
            *_, final = engine.generate(GenerationRequest(PROMPT, 64, GREEDY, seed=0))
            assert len(final.steps) == 64
            if repeat >= 2:  # warm-up
                samples[label].append((time.perf_counter() - start) * 1e3)
    return {label: percentiles(s) for label, s in samples.items()}


def call_cost(run, vocab_size: int, repeats: int) -> dict:
    """p50 milliseconds of a graph call reading T tokens of one sequence (``run(ids)``), and the
    line through them: milliseconds a call and a token, and the call's cost in tokens."""
    rng = np.random.default_rng(0)
    lengths = [1, 8, 32, 128]
    p50 = []
    for length in lengths:
        ids = rng.integers(0, vocab_size, (1, length))
        samples = []
        for repeat in range(repeats + 2):
            start = time.perf_counter()
            run(ids)
            if repeat >= 2:  # warm-up
                samples.append((time.perf_counter() - start) * 1e3)
        p50.append(float(np.median(samples)))
    per_token, per_call = np.polyfit(lengths, p50, 1)
    return {
        "tokens": lengths,
        "p50_ms": p50,
        "ms_per_call": float(per_call),
        "ms_per_token": float(per_token),
        "call_in_tokens": float(per_call / per_token),
    }


def graph_costs(engine: Engine, repeats: int) -> dict:
    """``call_cost`` of the attention model's decoder reading a prompt into an empty cache, and
    of its model.onnx reading a window for its last position's logits."""
    decoder = engine.model.decoder_session
    empty = CachedContext(decoder, engine.context)._empty(1)
    return {
        "decoder.onnx": call_cost(
            lambda ids: decoder.run(None, decode_feed(ids, empty, empty)),
            engine.vocab_size,
            repeats,
        ),
        "model.onnx": call_cost(
            lambda ids: engine._logits(ids, np.asarray([[ids.shape[1] - 1]])),
            engine.vocab_size,
            repeats,
        ),
    }


def run_threads(work, clients: int) -> float:
    """Seconds until ``work(i)`` has returned in each of ``clients`` threads, started together."""
    threads = [threading.Thread(target=work, args=(i,)) for i in range(clients)]
    start = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.monotonic() - start


WINDOWS = [4, 256, 16, 128, 8, 200, 32, 64]  # tokens of each thread's next-token window


def window_throughput(engine: Engine, clients: int, seconds: float) -> dict:
    """Next-token calls (model.onnx) from ``clients`` threads, each asking again and again for
    the logits after a window of its own length (``WINDOWS``): calls and window tokens read per
    second. Calls alone favour the short windows' threads wherever the cores are shared
    unevenly; the tokens are the work done."""
    rng = np.random.default_rng(0)
    windows = [[engine.eot, *rng.integers(0, engine.vocab_size, n - 1).tolist()] for n in WINDOWS]
    calls, tokens = [0] * clients, [0] * clients
    stop = time.monotonic() + seconds

    def work(i: int) -> None:
        while time.monotonic() < stop:
            engine.next_logits(windows[i % len(windows)])
            calls[i] += 1
            tokens[i] += len(windows[i % len(windows)])

    elapsed = run_threads(work, clients)
    return {
        "clients": clients,
        "calls_per_s": sum(calls) / elapsed,
        "window_tokens_per_s": sum(tokens) / elapsed,
        "seconds": elapsed,
    }


def throughput(engine: Engine, clients: int, seconds: float) -> dict:
    """New tokens per second from ``clients`` threads generating in a loop."""
    batcher = engine.decode_batcher or engine.batcher
    calls, rows = (batcher.calls, batcher.rows) if batcher else (0, 0)
    tokens = [0] * clients
    stop = time.monotonic() + seconds

    def work(i: int) -> None:
        prompt = f"Capítulo {i + 1}. {'Era uma vez ' * (i + 1)}um homem que"
        while time.monotonic() < stop:
            *_, final = engine.generate(GenerationRequest(prompt, 32, GREEDY, seed=0))
            tokens[i] += len(final.steps)

    elapsed = run_threads(work, clients)
    row = {"clients": clients, "new_tokens_per_s": sum(tokens) / elapsed, "seconds": elapsed}
    if batcher is not None and batcher.calls > calls:
        row["rows_per_call"] = (batcher.rows - rows) / (batcher.calls - calls)
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models-dir", type=Path, default=MODELS)
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads (2)")
    parser.add_argument("--wait-ms", type=float, default=2.0, help="batch wait (2 ms)")
    parser.add_argument("--seconds", type=float, default=9.0, help="per throughput figure (9)")
    parser.add_argument("--rounds", type=int, default=3, help="turns the seconds are split in (3)")
    parser.add_argument("--repeats", type=int, default=12, help="lone generations each (12)")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args(argv)

    settings = Settings(models_dir=args.models_dir, threads=args.threads, provider="cpu")
    models = load_models(settings.load_options())
    wait = args.wait_ms / 1000
    results = {}
    for name in ("attention", "bengio"):
        setups = {
            "off": Engine(models[name], max_batch_rows=1),
            "on, no wait": Engine(models[name], max_batch_rows=16, batch_wait=0.0),
            f"on, wait {args.wait_ms:g} ms": Engine(
                models[name], max_batch_rows=16, batch_wait=wait
            ),
        }
        off, _, waiting = setups
        latency = lone({"off": setups[off], "on": setups[waiting]}, args.repeats)
        # Rounds that take turns between the setups, so that drift of the machine hits all.
        runs: dict[tuple[str, int], list[dict]] = {}
        for _ in range(args.rounds):
            for label, engine in setups.items():
                for clients in (1, 8):
                    run = throughput(engine, clients, args.seconds / args.rounds)
                    runs.setdefault((label, clients), []).append(run)
        rows = []
        for (label, clients), parts in runs.items():
            seconds = sum(p["seconds"] for p in parts)
            row = {
                "batching": label,
                "clients": clients,
                "new_tokens_per_s": sum(p["new_tokens_per_s"] * p["seconds"] for p in parts)
                / seconds,
                "seconds": seconds,
            }
            if "rows_per_call" in parts[0]:
                row["rows_per_call"] = sum(p["rows_per_call"] for p in parts) / len(parts)
            rows.append(row)
            print(f"{name}: {row}", flush=True)
        results[name] = {
            "kv_cache": models[name].decoder_session is not None,
            "lone_generation_64_tokens_ms": latency,
            "throughput_32_token_generations": rows,
        }
        if models[name].decoder_session is not None:
            results[name]["call_cost"] = costs = graph_costs(setups[off], 4 * args.repeats)
            for graph, cost in costs.items():
                print(
                    f"{name} {graph}: a call costs {cost['ms_per_call']:.2f} ms + "
                    f"{cost['ms_per_token']:.3f} ms a token ({cost['call_in_tokens']:.0f} tokens)",
                    flush=True,
                )
    # Windows of mixed lengths through model.onnx (/next-token): padding every window to the
    # longest against leaving the short ones out of long batches.
    setups = {
        "off": Engine(models["attention"], max_batch_rows=1),
        "on, every window joins": Engine(models["attention"], max_batch_rows=16),
        "on": Engine(models["attention"], max_batch_rows=16),
    }
    setups["on, every window joins"].batcher.call_cost = None
    mixed: dict[str, list[dict]] = {}
    for _ in range(args.rounds):
        for label, engine in setups.items():
            mixed.setdefault(label, []).append(
                window_throughput(engine, 8, args.seconds / args.rounds)
            )
    windows = {
        label: {
            figure: sum(p[figure] * p["seconds"] for p in parts) / sum(p["seconds"] for p in parts)
            for figure in ("calls_per_s", "window_tokens_per_s")
        }
        for label, parts in mixed.items()
    }
    results["attention"]["next_token_mixed_windows_8_threads"] = windows
    print(f"attention, windows of {WINDOWS} tokens, 8 threads: {windows}", flush=True)
    print("\n| model | batching | 1 thread | 8 threads | rows per call, 8 threads |")
    print("|---|---|---|---|---|")
    for name, result in results.items():
        by = {}
        for row in result["throughput_32_token_generations"]:
            by.setdefault(row["batching"], {})[row["clients"]] = row
        for label, pair in by.items():
            per_call = pair[8].get("rows_per_call")
            print(
                f"| `{name}` | {label} | {pair[1]['new_tokens_per_s']:.0f} tok/s "
                f"| {pair[8]['new_tokens_per_s']:.0f} tok/s "
                f"| {'' if per_call is None else f'{per_call:.2f}'} |"
            )
    for name, result in results.items():
        lone_ms = result["lone_generation_64_tokens_ms"]
        print(
            f"{name}: lone 64-token generation p50 {lone_ms['off']['p50_ms']:.1f} ms off, "
            f"{lone_ms['on']['p50_ms']:.1f} ms on"
        )
    write_figures(
        {
            "cpu": cpu_name(),
            "threads": args.threads,
            "wait_ms": args.wait_ms,
            "models": results,
        },
        args.json,
    )
