"""Load run (bounded in count and time, loopback only): many clients mixing the endpoints.

Starts `python -m service` on a free 127.0.0.1 port with an A/B experiment, then runs CLIENTS
concurrent clients for SECONDS, each picking endpoints at random (/generate plain and streamed,
/next-token, /score, /attention, /tokenize, /compare, /v1/completions, the A/B arm through
'ab' with a client id: the mix of every load run in BENCHMARKS.md, kept so that they compare;
/detokenize and /v1/models/{model} came after it and are not in it). Records every status,
latency, and the server's resident memory over time; passes when there is no 5xx and every
rejection is a 429. Memory is recorded, not judged (BENCHMARKS.md reads the series).

`--hang-up P` makes it a test of what clients that give up do to the server: each request is,
with probability P, abandoned by its client after a random 20 to 500 ms (the connection closed
mid-request, mid-stream or while it waits for a slot). The run then also fails unless, within
10 s of its end, the server has no request in flight or waiting, and a set of probes (each
model's greedy /generate, /next-token and /score of a fixed text, taken before the run) answer
exactly as they did before it: nothing that the abandoned requests held (concurrency slots,
places in line, batches, key/value caches) stayed behind.

    python -m bench load --clients 32 --seconds 60 --json benchmarks/load-cpu.json
    python -m bench load --clients 32 --seconds 120 --hang-up 0.3 \
        --json benchmarks/load-cpu-hang-ups.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx

from bench.common import start_server, write_figures

PROMPTS = [
    "Capitu olhou para mim",
    "Não tive filhos",
    "A vida é",
    "Era uma vez",
    "O Conselheiro Aires escreveu no seu memorial",
]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def request_for(rng: random.Random, client_id: str) -> tuple[str, str, dict, dict]:
    prompt = rng.choice(PROMPTS)
    headers = {"X-Client-Id": client_id}
    choice = rng.random()
    if choice < 0.25:
        return (
            "ab /generate",
            "/generate",
            {"model": "ab", "prompt": prompt, "max_new_tokens": 16, "seed": rng.randrange(9)},
            headers,
        )
    if choice < 0.35:
        return (
            "/generate stream",
            "/generate",
            {
                "model": rng.choice(["attention", "bengio"]),
                "prompt": prompt,
                "max_new_tokens": 16,
                "stream": True,
            },
            headers,
        )
    if choice < 0.55:
        return "ab /next-token", "/next-token", {"model": "ab", "prompt": prompt}, headers
    if choice < 0.65:
        return "ab /score", "/score", {"model": "ab", "text": prompt * 4}, headers
    if choice < 0.75:
        return "/attention", "/attention", {"model": "attention", "prompt": prompt}, headers
    if choice < 0.82:
        return "/tokenize", "/tokenize", {"text": prompt}, headers
    if choice < 0.90:
        return "/compare", "/compare", {"prompt": prompt, "max_new_tokens": 8}, headers
    return (
        "/v1/completions",
        "/v1/completions",
        {"model": "attention-seed", "prompt": prompt, "max_tokens": 8},
        headers,
    )


HUNG_UP = "hung up"
PROBE_TEXT = "Não tive filhos, não transmiti a nenhuma criatura o legado da nossa miséria."


async def send(http: httpx.AsyncClient, path: str, body: dict, headers: dict) -> httpx.Response:
    if body.get("stream"):
        async with http.stream("POST", path, json=body, headers=headers) as response:
            async for _ in response.aiter_lines():
                pass
            return response
    return await http.post(path, json=body, headers=headers)


async def client_loop(
    base: str, index: int, deadline: float, results: list, hang_up: float = 0.0
) -> None:
    rng = random.Random(index)
    async with httpx.AsyncClient(base_url=base, timeout=60) as http:
        while time.monotonic() < deadline:
            # Each client speaks for many users, so the A/B split is over many ids.
            label, path, body, headers = request_for(rng, f"user-{rng.randrange(10_000)}")
            patience = rng.uniform(0.02, 0.5) if rng.random() < hang_up else None
            started = time.perf_counter()
            try:
                # Cancelling the request closes its connection: the server sees the hang-up.
                response = await asyncio.wait_for(send(http, path, body, headers), patience)
                status = response.status_code
            except TimeoutError:
                status = HUNG_UP
            except httpx.HTTPError as error:
                status = f"transport error: {type(error).__name__}"
            results.append((label, status, time.perf_counter() - started))
            if status == 429:  # a polite client waits as told
                await asyncio.sleep(float(response.headers.get("retry-after", "1")))


def probe(base: str, models: list[str]) -> dict:
    """Deterministic answers of every model (or the error a probe got): the same before and
    after a run, or a request left something behind."""

    def answer(path: str, body: dict, key: Callable[[dict], object]) -> object:
        response = http.post(path, json=body)
        return key(response.json()) if response.status_code == 200 else response.json()

    answers = {}
    with httpx.Client(base_url=base, timeout=60) as http:
        for model in models:
            answers[model] = {
                "generate": answer(
                    "/generate",
                    {"model": model, "prompt": PROMPTS[0], "max_new_tokens": 48, "temperature": 0},
                    lambda r: r["text"],
                ),
                "next_token": answer(
                    "/next-token",
                    {"model": model, "prompt": PROMPTS[1]},
                    lambda r: [(t["id"], t["logprob"]) for t in r["top"]],
                ),
                "score_nll": answer(
                    "/score", {"model": model, "text": PROBE_TEXT}, lambda r: r["nll_nats"]
                ),
            }
    return answers


def gauge(base: str, name: str) -> float:
    for line in httpx.get(f"{base}/metrics").text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    raise RuntimeError(f"/metrics has no {name}")


def in_flight(base: str) -> float:
    """Requests running or waiting for a slot."""
    return gauge(base, "machado_in_flight_requests") + gauge(base, "machado_queued_requests")


def client_closed(base: str) -> int:
    """Requests the server ended as 499 (its client hung up), from /metrics."""
    lines = httpx.get(f"{base}/metrics").text.splitlines()
    return sum(
        int(float(line.split()[-1]))
        for line in lines
        if line.startswith("machado_requests_total{") and 'status="499"' in line
    )


def settled(base: str, seconds: float = 10.0) -> float:
    """Requests still in flight once the server had ``seconds`` to finish what it was doing."""
    end = time.monotonic() + seconds
    while (count := in_flight(base)) and time.monotonic() < end:
        time.sleep(0.2)
    return count


async def run(base: str, pid: int, clients: int, seconds: float, hang_up: float = 0.0) -> dict:
    results: list = []
    memory: list[tuple[float, float]] = []
    start = time.monotonic()
    deadline = start + seconds

    async def sample_memory() -> None:
        while time.monotonic() < deadline:
            memory.append((time.monotonic() - start, rss_mib(pid)))
            await asyncio.sleep(2)

    await asyncio.gather(
        sample_memory(),
        *(client_loop(base, i, deadline, results, hang_up) for i in range(clients)),
    )
    return {"results": results, "memory": memory, "seconds": time.monotonic() - start}


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument(
        "--hang-up",
        type=float,
        default=0.0,
        metavar="P",
        help="probability that a client gives up on a request after 20 to 500 ms (default 0)",
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    base, proc = start_server(
        {"MACHADO_AB_WEIGHTS": "attention=50,bengio=50", "MACHADO_LOG_LEVEL": "warning"}
    )
    try:
        # Warm every path once, so that memory is measured after first-use allocations.
        asyncio.run(run(base, proc.pid, 4, 5))
        models = [m["name"] for m in httpx.get(f"{base}/models").json()["models"]]
        before = probe(base, models) if args.hang_up else None
        outcome = asyncio.run(run(base, proc.pid, args.clients, args.seconds, args.hang_up))
        left_in_flight = settled(base)
        closed = client_closed(base)
        ab = httpx.get(f"{base}/ab").json()
        after = probe(base, models) if args.hang_up else None
    finally:
        proc.terminate()
        proc.wait(30)
    statuses = Counter(str(s) for _, s, _ in outcome["results"])
    by_route: dict[str, Counter] = {}
    latencies: dict[str, list[float]] = {}
    for label, status, seconds in outcome["results"]:
        by_route.setdefault(label, Counter())[str(status)] += 1
        if status == 200:
            latencies.setdefault(label, []).append(seconds * 1000)
    memory = [m for _, m in outcome["memory"]]
    half = len(memory) // 2
    summary = {
        "clients": args.clients,
        "seconds": round(outcome["seconds"], 1),
        "requests": len(outcome["results"]),
        "requests_per_s": len(outcome["results"]) / outcome["seconds"],
        "statuses": dict(statuses),
        "server_errors": sum(n for s, n in statuses.items() if s.startswith("5")),
        "non_429_rejections": sum(
            n for s, n in statuses.items() if s not in ("200", "429", HUNG_UP)
        ),
        "hang_up_probability": args.hang_up,
        "server_499": closed,
        "in_flight_after": left_in_flight,
        "probes_unchanged": before == after,
        "by_route": {k: dict(v) for k, v in sorted(by_route.items())},
        "p50_ms": {k: statistics.median(v) for k, v in sorted(latencies.items())},
        "p95_ms": {k: _quantile(v, 0.95) for k, v in sorted(latencies.items())},
        "p99_ms": {k: _quantile(v, 0.99) for k, v in sorted(latencies.items())},
        "answered_per_s": statuses["200"] / outcome["seconds"],
        "rss_mib": {
            "first_half_mean": statistics.mean(memory[:half]),
            "second_half_mean": statistics.mean(memory[half:]),
            "min": min(memory),
            "max": max(memory),
            "samples": len(memory),
            "series": [[round(t, 1), round(m, 1)] for t, m in outcome["memory"]],
        },
        "ab": ab,
    }
    print(json.dumps(summary, indent=2))
    write_figures(summary, args.json)
    ok = (
        summary["server_errors"] == 0
        and summary["non_429_rejections"] == 0
        and left_in_flight == 0
        and before == after
    )
    if before != after:
        print(json.dumps({"probes_before": before, "probes_after": after}, indent=2))
    print(
        "PASS"
        if ok
        else "FAIL: 5xx, a rejection other than 429, requests left in flight or changed probes"
    )
    sys.exit(0 if ok else 1)
