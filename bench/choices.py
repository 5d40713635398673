"""Several completions of one prompt: one batch against one after another (not a test).

For each shipped model, through the service's engine on the CPU: n sampled completions of 64
new tokens of one 64-token prompt, made by `Engine.generate_many` as one batch (what
/v1/completions with n does) and by n calls of `Engine.generate` (what it did before).
Both give the same completions (tests/service/test_batched_choices.py); this measures time.
Writes JSON and prints a Markdown table.

    python -m bench choices --json benchmarks/choices-cpu.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench.common import MODELS, TEXT, cpu_name, percentiles, timed, write_figures
from runtime.engine import Engine, Generation
from runtime.loader import load_models
from runtime.results import GenerationRequest
from runtime.sampling import SamplingParams
from service.settings import Settings

NEW_TOKENS = 64


def measure(engine: Engine, prompt: str, n: int, params: SamplingParams, repeats: int) -> dict:
    seeds = list(range(n))

    def batch() -> None:
        events = engine.generate_many(GenerationRequest(prompt, NEW_TOKENS, params), seeds)
        assert sum(isinstance(item, Generation) for _, item in events) == n

    def one_by_one() -> None:
        for seed in seeds:
            for _ in engine.generate(GenerationRequest(prompt, NEW_TOKENS, params, seed=seed)):
                pass

    return {
        "n": n,
        "batched_ms": percentiles(timed(batch, repeats, warmup=1)),
        "sequential_ms": percentiles(timed(one_by_one, repeats, warmup=1)),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models-dir", type=Path, default=MODELS)
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads (2)")
    parser.add_argument("--n", type=int, nargs="+", default=[1, 4], help="choices (1 4)")
    parser.add_argument("--repeats", type=int, default=10, help="timed runs of each (10)")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args(argv)

    settings = Settings(models_dir=args.models_dir, threads=args.threads, provider="cpu")
    params = SamplingParams(temperature=1.0)
    results: dict[str, list[dict]] = {}
    for name, model in sorted(load_models(settings.load_options()).items()):
        engine = Engine(model)
        prompt = engine.decode(engine.prompt_ids(TEXT)[1:64])
        for n in args.n:
            row = {
                **measure(engine, prompt, n, params, args.repeats),
                "kv_cache": model.decoder_session is not None,
            }
            results.setdefault(name, []).append(row)
            print(f"{name}: {json.dumps(row)}", flush=True)
    print(
        f"\n| model | n | {NEW_TOKENS} new tokens each, one batch p50 | one after another p50 "
        "| speed-up |\n|---|---|---|---|---|"
    )
    for name, rows in results.items():
        for row in rows:
            b, s = row["batched_ms"]["p50_ms"], row["sequential_ms"]["p50_ms"]
            print(f"| `{name}` | {row['n']} | {b:.1f} ms | {s:.1f} ms | {s / b:.2f}x |")
    result = {
        "cpu": cpu_name(),
        "threads": args.threads,
        "new_tokens": NEW_TOKENS,
        "models": results,
    }
    write_figures(result, args.json)
