"""What recording the A/B experiment costs a request (not a test): the service with no record,
with its SQLite file and with PostgreSQL (``--postgres URL``), taking turns.

For each setup a service is started on a free port; then, in rounds that alternate the setups,
sequential ``/next-token`` requests through model ``ab`` (latency p50 / p99) and ``--clients``
concurrent clients for ``--seconds`` (requests per second). Every request is recorded in the
setups that have a store, so the figures include the writer thread's work beside the requests.

    python -m bench ab-store --postgres postgresql://USER:PASSWORD@127.0.0.1/DB \\
      --json benchmarks/ab-store-cpu.json
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from bench import common
from bench.common import cpu_name, percentiles, start_server, write_figures

BODY = {"model": "ab", "prompt": "Capitu olhou para mim", "top_k": 5}


def sequential(base: str, requests: int) -> dict:
    samples = []
    with httpx.Client(base_url=base, timeout=60) as client:
        for i in range(requests):
            started = time.perf_counter()
            answer = client.post("/next-token", json=BODY, headers={"X-Client-Id": f"s{i}"})
            samples.append((time.perf_counter() - started) * 1000)
            answer.raise_for_status()
    return percentiles(samples)


async def concurrent(base: str, clients: int, seconds: float) -> float:
    """Answered requests per second with ``clients`` clients in a loop."""
    done = 0
    deadline = time.perf_counter() + seconds
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:

        async def worker(k: int) -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                answer = await client.post(
                    "/next-token", json=BODY, headers={"X-Client-Id": f"c{k}"}
                )
                done += answer.status_code == 200

        started = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(clients)))
        return done / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--postgres", default=None, help="a PostgreSQL URL to measure too")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, setups alternating (3)")
    parser.add_argument("--requests", type=int, default=200, help="sequential requests (200)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients (16)")
    parser.add_argument("--seconds", type=float, default=10.0, help="of concurrent load (10)")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args(argv)
    # The figures' file names the command, not the database's password.
    common.COMMAND[:] = [re.sub(r"://([^:/@]+):[^@]+@", r"://\1:***@", a) for a in common.COMMAND]
    work = Path(tempfile.mkdtemp(prefix="ab-store-"))
    setups = {"none": "", "sqlite": f"sqlite:///{work / 'ab.db'}"}
    if args.postgres:
        setups["postgresql"] = args.postgres
    env = {"MACHADO_AB_WEIGHTS": "attention=50,bengio=50", "MACHADO_MAX_CONCURRENCY": "32"}
    servers = {name: start_server({**env, "MACHADO_AB_STORE": url}) for name, url in setups.items()}
    runs: dict[str, list[dict]] = {name: [] for name in setups}
    try:
        for round_ in range(args.rounds):
            for name, (base, _) in servers.items():
                figures = sequential(base, args.requests)
                figures["requests_per_s"] = asyncio.run(
                    concurrent(base, args.clients, args.seconds)
                )
                runs[name].append(figures)
                print(f"round {round_ + 1} {name}: {figures}", flush=True)
        recorded = {
            name: len(httpx.get(f"{base}/ab/export", timeout=60).json()["rows"])
            for name, (base, _) in servers.items()
            if setups[name]
        }
    finally:
        for _, proc in servers.values():
            proc.terminate()
            proc.wait(timeout=30)
    summary = {
        name: {
            "p50_ms": statistics.median(r["p50_ms"] for r in rounds),
            "p99_ms": statistics.median(r["p99_ms"] for r in rounds),
            "requests_per_s": statistics.median(r["requests_per_s"] for r in rounds),
        }
        for name, rounds in runs.items()
    }
    print("| record | `/next-token` via `ab` p50 / p99 | req/s, 16 clients |")
    print("|---|---|---|")
    for name, s in summary.items():
        line = f"{s['p50_ms']:.2f} / {s['p99_ms']:.2f} ms | {s['requests_per_s']:.1f}"
        print(f"| {name} | {line} |")
    write_figures(
        {
            "cpu": cpu_name(),
            "body": BODY,
            "rounds": args.rounds,
            "clients": args.clients,
            "seconds": args.seconds,
            "runs": runs,
            "medians": summary,
            "rows_recorded": recorded,
        },
        args.json,
    )
