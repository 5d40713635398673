"""/score benchmark (not a test): how fast each model scores a long text, in several setups.

Each setup is a checkout (its own `service/`) with environment variables of its own, as in
python -m bench compare; all of them run at once on free loopback ports with the same models,
and take turns, one request at a time, so that every setup sees the machine in the same state.
The text is `--chars` characters of a fixed Portuguese passage, repeated (scoring time depends on
its tokens, not on what they say), or of a file (`--text`: a work of the corpus has more tokens
per character than the repeated passage). For each setup and model: the request's wall time
(p50, p99), tokens scored per second at the median, and the bits per character it answered (which
a change of speed must leave as it was).

    git worktree add /tmp/score-before COMMIT
    python -m bench score --setup before=/tmp/score-before --setup now=. \
        --json benchmarks/score-cpu.json
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import httpx

from bench.common import TEXT, cpu_name, percentiles, write_figures
from bench.compare import add_setup_arguments, describe_setups, parse_setups, served

MODELS = ("attention", "attention-seed", "bengio")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_setup_arguments(parser, rounds=5, block=2, per="model")
    parser.add_argument("--chars", type=int, default=20_000, help="characters of the text")
    parser.add_argument(
        "--text",
        type=Path,
        default=None,
        help="take the text from this file (its first --chars characters; e.g. a work of the "
        "corpus) instead of repeating a fixed passage",
    )
    args = parser.parse_args(argv)

    source = args.text.read_text() if args.text else TEXT * (args.chars // len(TEXT) + 1)
    text = source[: args.chars]
    checkouts, envs = parse_setups(args.setup, args.threads)
    for env in envs.values():
        env.setdefault("MACHADO_MAX_SCORE_CHARS", str(max(args.chars, 200_000)))
        env.setdefault("MACHADO_REQUEST_TIMEOUT_S", "600")
    with served(checkouts, envs) as servers:
        figures: dict[str, dict[str, dict]] = {name: {} for name in servers}
        with httpx.Client(timeout=600) as client:
            for model in MODELS:
                body = {"model": model, "text": text}
                walls: dict[str, list[float]] = {name: [] for name in servers}
                answers: dict[str, dict] = {}
                for name, (base, _) in servers.items():  # warm-up, and the answer to compare
                    response = client.post(f"{base}/score", json=body)
                    response.raise_for_status()
                    answers[name] = response.json()
                for _ in range(args.rounds):
                    for name, (base, _) in servers.items():
                        for _ in range(args.block):
                            started = time.perf_counter()
                            client.post(f"{base}/score", json=body).raise_for_status()
                            walls[name].append((time.perf_counter() - started) * 1000)
                for name in servers:
                    wall = percentiles(walls[name])
                    answer = answers[name]
                    figures[name][model] = {
                        "request": wall,
                        "tokens": answer["tokens"],
                        "tokens_per_s": answer["tokens"] / (wall["p50_ms"] / 1000),
                        "bits_per_character": answer["bits_per_character"],
                        "window": answer["window"],
                        "stride": answer["stride"],
                    }

    result = {
        "benchmark": "POST /score of one long text, several setups taking turns",
        "cpu": cpu_name(),
        "threads": args.threads,
        "characters": len(text),
        "text": str(args.text) if args.text else "a fixed passage, repeated",
        "setups": describe_setups(checkouts, envs),
        "figures": figures,
    }
    write_figures(result, args.json)
    print("| model | setup | window, stride | request p50 | p99 | tokens/s | BPC |")
    print("|---|---|---|---|---|---|---|")
    for model in MODELS:
        for name, per_model in figures.items():
            entry = per_model[model]
            print(
                f"| {model} | {name} ({result['setups'][name]['commit']}) | "
                f"{entry['window']}, {entry['stride']} | {entry['request']['p50_ms']:.0f} ms | "
                f"{entry['request']['p99_ms']:.0f} ms | {entry['tokens_per_s']:,.0f} | "
                f"{entry['bits_per_character']:.6f} |"
            )
    print(f"{len(text):,} characters, {args.threads} threads, {cpu_name()}")
