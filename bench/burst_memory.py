"""Memory kept after bursts of large requests: rounds of concurrent `/v1/completions` that each
echo a long prompt with alternatives (the largest kind of scoring work), in one process, with the
resident memory after each round and the peak, above the process's size once its models loaded.

    python -m bench burst-memory --json benchmarks/burst-memory-cpu.json
    python -m bench burst-memory --large-calls 1 --json ...   # one large call at a time
    python -m bench burst-memory --no-arena --json ...        # ONNX Runtime's arena off
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fastapi.testclient import TestClient

import runtime.engine
import runtime.loader
from service.app import create_app
from service.settings import Settings

MODELS = Path(__file__).resolve().parents[1] / "models"


def rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="bursts, one after the other")
    parser.add_argument("--clients", type=int, default=8, help="requests at once in a burst")
    parser.add_argument("--prompt-ids", type=int, default=2000, help="ids of the echoed prompt")
    parser.add_argument("--large-calls", type=int, help="large graph calls of a model at once")
    parser.add_argument("--no-arena", action="store_true", help="ONNX Runtime's CPU arena off")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    if args.large_calls is not None:
        runtime.engine.LARGE_CALLS = args.large_calls
    if args.no_arena:
        options = runtime.loader.session_options

        def without_arena(settings):
            chosen = options(settings)
            chosen.enable_cpu_mem_arena = False
            return chosen

        runtime.loader.session_options = without_arena
        runtime.engine.LARGE_CALL_ELEMENTS = 1 << 62  # no arena to shrink
    settings = Settings(
        models_dir=MODELS,
        max_concurrency=args.clients,
        max_prompt_chars=8000,
        request_timeout_s=600,
        log_level="warning",
    )
    body = {"model": "bengio", "prompt": [17] * args.prompt_ids, "max_tokens": 64, "n": 4,
            "logprobs": 5, "echo": True}  # fmt: skip
    rounds = []
    with TestClient(create_app(settings)) as client:
        start = rss_mib()
        for _ in range(args.rounds):
            started = time.perf_counter()
            with ThreadPoolExecutor(args.clients) as pool:
                answers = list(
                    pool.map(
                        lambda _: client.post("/v1/completions", json=body), range(args.clients)
                    )
                )
            assert all(a.status_code == 200 for a in answers), answers[0].text
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            rounds.append(
                {
                    "seconds": round(time.perf_counter() - started, 2),
                    "kept_mib": round(rss_mib() - start, 1),
                    "peak_above_start_mib": round(peak - start, 1),
                    "answer_bytes": len(answers[0].content),
                }
            )
            print(rounds[-1], flush=True)
    result = {
        "large_calls": runtime.engine.LARGE_CALLS,
        "arena": not args.no_arena,
        "clients": args.clients,
        "prompt_ids": args.prompt_ids,
        "start_mib": round(start, 1),
        "rounds": rounds,
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
