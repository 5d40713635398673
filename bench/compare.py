"""/compare benchmark (not a test): the services of several checkouts or settings, taking turns.

Each setup is a checkout (its own `service/`) with environment variables of its own; all of them
run at once on free loopback ports with the same models, and requests go to one after the other
in blocks, one request at a time, so that every setup sees the machine in the same state. Two
request shapes:
- ``playground``: what the playground's Compare button sends (a 24-token prompt, one new token,
  8 candidates, every model);
- ``completion``: a 64-token prompt and 32 new tokens, greedy, every model.
For each: the request's wall time (p50, p99) and each model's own ``latency_ms`` (p50).

    git worktree add /tmp/compare-before COMMIT
    python -m bench compare --setup before=/tmp/compare-before \
        --setup spin-long=.,MACHADO_THREAD_SPIN_US=-1 --setup now=. \
        --json benchmarks/compare-cpu.json
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from bench.common import MODELS, cpu_name, percentiles, prompt_of, start_server, write_figures

SHAPES = {
    "playground": {"tokens": 24, "max_new_tokens": 1, "top_n": 8},
    "completion": {"tokens": 64, "max_new_tokens": 32, "top_n": 5},
}


def git_commit(path: Path) -> str:
    import subprocess

    done = subprocess.run(
        ["git", "describe", "--always", "--dirty"], cwd=path, capture_output=True, text=True
    )
    return done.stdout.strip() or "unknown"


def add_setup_arguments(parser: argparse.ArgumentParser, rounds: int, block: int, per: str) -> None:
    """The flags of a benchmark whose setups take turns: --setup, --rounds, --block, --threads,
    --json."""
    parser.add_argument(
        "--setup",
        action="append",
        required=True,
        help="LABEL=CHECKOUT[,KEY=VALUE...]: a checkout to serve from, and its environment",
    )
    parser.add_argument("--rounds", type=int, default=rounds, help=f"blocks per setup and {per}")
    parser.add_argument("--block", type=int, default=block, help="requests per block")
    parser.add_argument("--threads", type=int, default=2, help="MACHADO_THREADS of every setup")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")


def parse_setups(
    specs: list[str], threads: int
) -> tuple[dict[str, Path], dict[str, dict[str, str]]]:
    """``LABEL=CHECKOUT[,KEY=VALUE...]`` -> each label's checkout and its service environment."""
    checkouts: dict[str, Path] = {}
    envs: dict[str, dict[str, str]] = {}
    for spec in specs:
        label, _, rest = spec.partition("=")
        path, *pairs = rest.split(",")
        checkouts[label] = Path(path).resolve()
        envs[label] = {"MACHADO_THREADS": str(threads), "MACHADO_LOG_LEVEL": "warning"}
        envs[label].update(pair.split("=", 1) for pair in pairs)
    return checkouts, envs


@contextmanager
def served(checkouts: dict[str, Path], envs: dict[str, dict[str, str]]) -> Iterator[dict]:
    """Each setup's service at once: label -> (base URL, process); all stopped at the end."""
    servers = {name: start_server(envs[name], cwd=path) for name, path in checkouts.items()}
    try:
        yield servers
    finally:
        for _, proc in servers.values():
            proc.terminate()
            proc.wait(timeout=30)


def describe_setups(checkouts: dict[str, Path], envs: dict[str, dict[str, str]]) -> dict:
    """What the figures file says of each setup: its checkout's commit and its environment."""
    return {
        name: {"commit": git_commit(path), "environment": envs[name]}
        for name, path in checkouts.items()
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_setup_arguments(parser, rounds=8, block=5, per="shape")
    args = parser.parse_args(argv)

    checkouts, envs = parse_setups(args.setup, args.threads)
    with served(checkouts, envs) as servers:
        figures: dict[str, dict] = {}
        with httpx.Client(timeout=120) as client:
            for shape, spec in SHAPES.items():
                body = {
                    "prompt": prompt_of(spec["tokens"], MODELS),
                    "max_new_tokens": spec["max_new_tokens"],
                    "top_n": spec["top_n"],
                    "temperature": 0,
                }
                walls: dict[str, list[float]] = {name: [] for name in servers}
                models: dict[str, dict[str, list[float]]] = {name: {} for name in servers}
                for base, _ in servers.values():  # warm-up
                    for _ in range(3):
                        client.post(f"{base}/compare", json=body).raise_for_status()
                for _ in range(args.rounds):
                    for name, (base, _) in servers.items():
                        for _ in range(args.block):
                            started = time.perf_counter()
                            response = client.post(f"{base}/compare", json=body)
                            walls[name].append((time.perf_counter() - started) * 1000)
                            response.raise_for_status()
                            for result in response.json()["results"]:
                                models[name].setdefault(result["model"], []).append(
                                    result["latency_ms"]
                                )
                figures[shape] = {
                    name: {
                        "request": percentiles(walls[name]),
                        "model_latency_p50_ms": {
                            model: statistics.median(samples)
                            for model, samples in sorted(models[name].items())
                        },
                    }
                    for name in servers
                }

    result = {
        "benchmark": "POST /compare, several setups taking turns",
        "cpu": cpu_name(),
        "threads": args.threads,
        "setups": describe_setups(checkouts, envs),
        "shapes": SHAPES,
        "figures": figures,
    }
    write_figures(result, args.json)
    print("| shape | setup | request p50 | request p99 | each model's latency_ms p50 |")
    print("|---|---|---|---|---|")
    for shape, setups in figures.items():
        for name, entry in setups.items():
            each = ", ".join(f"{m} {ms:.1f}" for m, ms in entry["model_latency_p50_ms"].items())
            print(
                f"| {shape} | {name} ({result['setups'][name]['commit']}) | "
                f"{entry['request']['p50_ms']:.1f} ms | {entry['request']['p99_ms']:.1f} ms | "
                f"{each} |"
            )
