"""Service benchmark (not a test): HTTP latency and throughput beside the raw ONNX Runtime call.

Starts `python -m service` on a free loopback port, then measures for one model:
- /next-token with a 64-token prompt: p50/p99 latency over sequential requests;
- /generate with 64 new tokens (greedy): p50/p99 latency;
- /next-token requests per second at concurrency 1 and 16 (bounded in time);
- the same next-token computation called in-process on ONNX Runtime, no HTTP.
Writes the figures as JSON and prints a Markdown table.

    python -m bench service --model attention --json benchmarks/service-cpu.json
    python -m bench service --model attention --quantize int8 --json ...   (int8 weights)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

import httpx
import numpy as np

from bench.common import (
    MODELS,
    cpu_name,
    percentiles,
    prompt_of,
    start_server,
    timed,
    write_figures,
)


async def throughput(
    base: str, body: dict, concurrency: int, seconds: float, path: str = "/next-token"
) -> dict:
    """Requests per second with ``concurrency`` clients looping for ``seconds`` (and new
    tokens per second, for /generate)."""
    statuses: dict[int, int] = {}
    tokens = 0
    deadline = time.perf_counter() + seconds
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:

        async def worker() -> None:
            nonlocal tokens
            while time.perf_counter() < deadline:
                response = await client.post(path, json=body)
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                if response.status_code == 200 and path == "/generate":
                    tokens += response.json()["usage"]["completion_tokens"]

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    done = sum(statuses.values())
    result = {
        "path": path,
        "concurrency": concurrency,
        "requests": done,
        "seconds": elapsed,
        "requests_per_s": done / elapsed,
        "statuses": statuses,
    }
    if path == "/generate":
        result["new_tokens_per_s"] = tokens / elapsed
    return result


def raw_onnx(
    models_dir: Path,
    model: str,
    prompt: str,
    threads: int,
    n: int,
    provider: str,
    quantize: str = "none",
    thread_spin_us: int = 50,
) -> dict:
    """The next-token graph call alone, in-process, with the service's session options."""
    from runtime.loader import ProviderChoice, choose_providers, load_model
    from service.settings import Settings

    settings = Settings(
        models_dir=models_dir,
        threads=threads,
        provider=provider,
        quantize=quantize,
        thread_spin_us=thread_spin_us,
    )
    choice = ProviderChoice(*choose_providers(provider))
    loaded = load_model(models_dir / model, settings.load_options(), {}, choice)
    eot = loaded.tokenizer.token_to_id("<|endoftext|>")
    ids = [eot, *loaded.tokenizer.encode(prompt, add_special_tokens=False).ids]
    window = np.asarray(ids[-int(loaded.card["context"]) :], dtype=np.int64)[None]
    positions = np.asarray([[window.shape[1] - 1]])
    result = percentiles(
        timed(
            lambda: loaded.session.run(["logits"], {"input_ids": window, "positions": positions}), n
        )
    )
    return {**result, "provider": loaded.provider, "precision": loaded.precision}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="attention", help="model to measure (attention)")
    parser.add_argument("--models-dir", type=Path, default=MODELS)
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads (2)")
    parser.add_argument(
        "--provider", choices=("auto", "cuda", "cpu"), default="cpu", help="MACHADO_PROVIDER (cpu)"
    )
    parser.add_argument(
        "--quantize", choices=("none", "int8"), default="none", help="MACHADO_QUANTIZE (none)"
    )
    parser.add_argument(
        "--max-batch-rows", type=int, default=16, help="MACHADO_MAX_BATCH_ROWS (16)"
    )
    parser.add_argument(
        "--batch-wait-ms", type=float, default=2.0, help="MACHADO_BATCH_WAIT_MS (2)"
    )
    parser.add_argument(
        "--thread-spin-us", type=int, default=50, help="MACHADO_THREAD_SPIN_US (50)"
    )
    parser.add_argument("--requests", type=int, default=200, help="sequential /next-token calls")
    parser.add_argument("--generations", type=int, default=20, help="sequential /generate calls")
    parser.add_argument("--seconds", type=float, default=10.0, help="per throughput run")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args(argv)

    args.models_dir = args.models_dir.resolve()  # the server runs in another directory
    prompt = prompt_of(64, args.models_dir)
    base, server = start_server(
        {
            "MACHADO_MAX_CONCURRENCY": "32",
            "MACHADO_LOG_LEVEL": "warning",
            "MACHADO_MODELS_DIR": str(args.models_dir),
            "MACHADO_THREADS": str(args.threads),
            "MACHADO_PROVIDER": args.provider,
            "MACHADO_QUANTIZE": args.quantize,
            "MACHADO_MAX_BATCH_ROWS": str(args.max_batch_rows),
            "MACHADO_BATCH_WAIT_MS": str(args.batch_wait_ms),
            "MACHADO_THREAD_SPIN_US": str(args.thread_spin_us),
        }
    )
    try:
        next_body = {"model": args.model, "prompt": prompt, "top_k": 5}
        gen_body = {"model": args.model, "prompt": prompt, "max_new_tokens": 64, "temperature": 0}
        with httpx.Client(base_url=base, timeout=120) as http:
            info = {m["name"]: m for m in http.get("/models").json()["models"]}[args.model]
            seen = http.post("/next-token", json=next_body).json()["tokens"]
            next_token = percentiles(
                timed(lambda: http.post("/next-token", json=next_body), args.requests)
            )
            generated = http.post("/generate", json=gen_body).json()["usage"]
            generate = percentiles(
                timed(lambda: http.post("/generate", json=gen_body), args.generations, warmup=1)
            )
        rates = [asyncio.run(throughput(base, next_body, c, args.seconds)) for c in (1, 16)]
        generation_rates = [
            asyncio.run(throughput(base, {**gen_body, "max_new_tokens": 32}, c, args.seconds, p))
            for c, p in ((1, "/generate"), (8, "/generate"))
        ]
    finally:
        server.terminate()
        server.wait(30)
    raw = raw_onnx(
        args.models_dir,
        args.model,
        prompt,
        args.threads,
        args.requests,
        args.provider,
        args.quantize,
        args.thread_spin_us,
    )
    result = {
        "model": args.model,
        "prompt_tokens_seen": len(seen),
        "generate_new_tokens": generated["completion_tokens"],
        "cpu": cpu_name(),
        "threads": args.threads,
        "provider": raw["provider"],
        "precision": info["precision"],
        "max_batch_rows": args.max_batch_rows,
        "batch_wait_ms": args.batch_wait_ms,
        "thread_spin_us": args.thread_spin_us,
        "kv_cache": info["kv_cache"],
        "next_token_http": next_token,
        "generate_http": generate,
        "throughput": rates,
        "generate_throughput": generation_rates,
        "next_token_raw_onnxruntime": raw,
    }
    print(json.dumps(result, indent=2))
    print(f"\n| measure ({args.model}) | p50 ms | p99 ms |\n|---|---|---|")
    print(
        f"| raw ONNX Runtime next-token call, in-process | {raw['p50_ms']:.2f} | "
        f"{raw['p99_ms']:.2f} |"
    )
    print(
        f"| POST /next-token, {len(seen)} tokens seen | {next_token['p50_ms']:.2f} | "
        f"{next_token['p99_ms']:.2f} |"
    )
    print(
        f"| POST /generate, {generated['completion_tokens']} new tokens | "
        f"{generate['p50_ms']:.1f} | {generate['p99_ms']:.1f} |"
    )
    for rate in rates:
        print(
            f"| /next-token at concurrency {rate['concurrency']}: "
            f"{rate['requests_per_s']:.1f} requests/s, statuses {rate['statuses']} | | |"
        )
    for rate in generation_rates:
        print(
            f"| /generate (32 tokens) at concurrency {rate['concurrency']}: "
            f"{rate['new_tokens_per_s']:.0f} new tokens/s, statuses {rate['statuses']} | | |"
        )
    write_figures(result, args.json)
