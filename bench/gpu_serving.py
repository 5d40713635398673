"""Serving speed on a GPU against the CPU provider in the same run, through HTTP.

For each provider (`--providers`, default cuda then cpu) the service serves the attention model
alone, with room for every client (`MACHADO_MAX_CONCURRENCY`, `MACHADO_MAX_QUEUE`,
`MACHADO_MAX_BATCH_ROWS` and `MACHADO_KV_SLOTS` raised to the most clients), and this measures:
- `single_stream_ms_64`: the median time of 64 new tokens for one client (after a 32-token
  prompt, greedy, `/v1/completions`, as bench llama-server sends it);
- `new_tokens_per_s` and `p99_ms` at 1, 8, 32 and 128 concurrent clients (`--clients`), each
  client sending its requests one after the other.
The first provider's figures are at the top level of the file, every provider's under
`providers`.
Providers alternate round by round. On a machine without a GPU, `--providers cpu` rehearses it.

    python -m bench gpu-serving --json benchmarks/gpu-serving.json
    python -m bench gpu-serving --providers cpu --clients 1 8 --rounds 1   (rehearsal)
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from bench.common import MODELS, cpu_name, gpu_name, start_server, write_figures
from bench.llama_server import alternate, prompts


def served(provider: str, clients: int, threads: int, models_dir: Path):
    """The service on ``provider`` with room for ``clients`` at once: (base URL, process)."""
    room = str(max(clients, 8))
    env = {
        "MACHADO_PROVIDER": provider,
        "MACHADO_THREADS": str(threads),
        "MACHADO_MAX_CONCURRENCY": room,
        "MACHADO_MAX_QUEUE": room,
        "MACHADO_MAX_BATCH_ROWS": room,
        "MACHADO_KV_SLOTS": room,
        "MACHADO_QUEUE_TIMEOUT_S": "120",
        "MACHADO_REQUEST_TIMEOUT_S": "600",
    }
    return start_server(env, models_dir=models_dir)


def per_client(clients: int) -> int:
    """Requests each client sends one after the other: 64 in all up to 32 clients, then 2."""
    return max(2, 64 // clients) if clients < 32 else 2


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--providers", nargs="+", default=["cuda", "cpu"])
    parser.add_argument("--clients", nargs="+", type=int, default=[1, 8, 32, 128])
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds (2)")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime CPU threads (2)")
    parser.add_argument("--models-dir", type=Path, default=MODELS)
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args(argv)

    texts = prompts()
    most = max(args.clients)
    servers, procs = {}, []
    try:
        for provider in args.providers:
            base, proc = served(provider, most, args.threads, args.models_dir)
            servers[provider] = base
            procs.append(proc)
        served_by = {provider: (base, "service") for provider, base in servers.items()}
        runs = alternate(served_by, args.clients, args.rounds, per_client, texts)
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(30)

    def summary(provider: str) -> dict:
        rows = runs[provider]
        return {
            "single_stream_ms_64": statistics.median(f["p50_ms"] for f in rows["1"])
            if "1" in rows
            else None,
            "new_tokens_per_s": {
                c: statistics.median(f["tokens_per_s"] for f in rows[c]) for c in rows
            },
            "p99_ms": {c: statistics.median(f["p99_ms"] for f in rows[c]) for c in rows},
        }

    first = args.providers[0]
    result = {
        "device": gpu_name(),
        "host_cpu": cpu_name(),
        "model": "attention",
        "provider": first,  # the figures at the top level are this provider's
        **summary(first),
        "providers": {provider: summary(provider) for provider in args.providers},
        "rounds": runs,
    }
    write_figures(result, args.json)
    for provider in args.providers:
        print(provider, summary(provider))
