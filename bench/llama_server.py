"""This service against llama.cpp's own server (`llama-server`) on the same weights, on the CPU.

The shipped attention model goes to GGUF (bench/gguf_export.py: f16 holds exactly the served
float16-stored weights; q8_0 is llama.cpp's 8-bit quantization), and the two servers answer the
same requests through their OpenAI `/v1/completions`: a 32-token prompt (the end-of-text token
and 31 tokens, sent as token ids to both, so both read the same tokens), 64 greedy new tokens,
from 1, 8 and 32 concurrent clients, in alternating rounds. Pairs: this service's float32
default against llama-server's f16, and its int8 mode (MACHADO_QUANTIZE=int8) against q8_0.
llama-server runs as its users run it for throughput (`-t 2 --parallel 32 -c 8192
--cont-batching`), with its prompt cache off (`cache_prompt: false`: this service has none);
this service with as many sequences at once (PARALLEL: 32 requests running, 32 cache slots,
steps of up to 32 rows; its defaults hold 8 and 16).

Before timing: greedy completions of 8 prompts x 64 tokens must be identical between each pair
(the conversion is exact), and each of this service's modes is scored through /score on the
first `--score-chars` characters of the test split (its BPC, as the quality check of a mode).
The machine's limits go in the file too: memory copy bandwidth and matrix-product throughput
on 2 threads, and the bytes of weights one token reads.

    python -m bench llama-server --json benchmarks/cpu-vs-llama-server.json

llama-server is found at `--llama-server`, on PATH, or in build/llama.cpp (built there, from the
llama.cpp tree that llama-cpp-python's source distribution carries, by `--build`: about 10 to 20
minutes on 2 cores, once).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np

from bench.common import (
    MODELS,
    ROOT,
    TEXT,
    cpu_name,
    free_port,
    start_server,
    wait_until_ready,
    write_figures,
)
from bench.gguf_export import write_gguf

BUILD = ROOT / "build" / "llama.cpp"
LLAMA_CPP_PYTHON = "llama-cpp-python==0.3.36"  # its sdist carries llama.cpp under vendor/
NO_AMX = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
PROMPT_TOKENS, NEW_TOKENS = 32, 64
CLIENTS = (1, 8, 32)
PARALLEL = 32  # sequences generated at once, by either server
SERVICE_PARALLEL = {
    "MACHADO_MAX_CONCURRENCY": str(PARALLEL),
    "MACHADO_KV_SLOTS": str(PARALLEL),
    "MACHADO_MAX_BATCH_ROWS": str(PARALLEL),
}
SYSTEMS = {  # name: (kind, setting)
    "service-float32": ("service", "none"),
    "llama-server-f16": ("llama", "f16"),
    "service-int8": ("service", "int8"),
    "llama-server-q8_0": ("llama", "q8_0"),
}
# Measured at one client only, where drafting applies: this service without its drafts, and
# llama-server with its own n-gram drafts, tuned as this service's (an ending of 3 tokens, up to
# 8 drafted; its default looks for 12, for editing code).
ONE_CLIENT = {
    "service-float32-no-drafts": ("service", "none"),
    "llama-server-f16-ngram": ("llama", "f16"),
}
EXTRA = {
    "service-float32-no-drafts": {"MACHADO_DRAFT_TOKENS": "0"},
    "llama-server-f16-ngram": [
        "--spec-type",
        "ngram-simple",
        "--spec-ngram-simple-size-n",
        "3",
        "--spec-ngram-simple-size-m",
        "8",
    ],
}
PAIRS = {
    "float32_vs_f16": ("service-float32", "llama-server-f16"),
    "int8_vs_q8_0": ("service-int8", "llama-server-q8_0"),
}


def find_llama_server(given: Path | None, build: bool) -> Path:
    """llama-server's executable: as given, on PATH, built before in build/llama.cpp, or built
    now (``build``)."""
    for candidate in (
        given,
        shutil.which("llama-server"),
        *BUILD.glob("*/vendor/llama.cpp/build/bin/llama-server"),
    ):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    if not build:
        raise SystemExit("no llama-server: give --llama-server PATH, put it on PATH, or --build")
    BUILD.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
    subprocess.run([*pip, LLAMA_CPP_PYTHON, "-d", str(BUILD)], check=True)
    archive = next(BUILD.glob("llama_cpp_python-*.tar.gz"))
    subprocess.run(["tar", "xzf", str(archive), "-C", str(BUILD)], check=True)
    tree = next(BUILD.glob("llama_cpp_python-*/vendor/llama.cpp"))
    flags = [
        "-DCMAKE_BUILD_TYPE=Release",
        "-DGGML_NATIVE=ON",
        # Tuned for this CPU, but without AMX: a CPU may report AMX that the kernel does not
        # let a process use (in a VM, say), and q8_0's repacked weights then die of SIGILL.
        f"-DCMAKE_C_FLAGS={NO_AMX}",
        f"-DCMAKE_CXX_FLAGS={NO_AMX}",
        "-DLLAMA_CURL=OFF",
        "-DLLAMA_OPENSSL=OFF",
        "-DLLAMA_BUILD_SERVER=ON",
        "-DLLAMA_BUILD_TESTS=OFF",
        "-DLLAMA_BUILD_EXAMPLES=OFF",
    ]
    subprocess.run(["cmake", "-B", "build", "-G", "Ninja", *flags], cwd=tree, check=True)
    subprocess.run(
        ["cmake", "--build", "build", "--target", "llama-server", "-j2"], cwd=tree, check=True
    )
    return tree / "build" / "bin" / "llama-server"


def start_llama_server(
    binary: Path, gguf: Path, threads: int, extra: list[str] | None = None
) -> tuple[str, subprocess.Popen]:
    port = free_port()
    log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)  # noqa: SIM115
    env = {**os.environ, "LD_LIBRARY_PATH": str(binary.parent)}
    command = [str(binary), "-m", str(gguf), "-t", str(threads), "--parallel", str(PARALLEL)]
    command += ["-c", "8192", "--cont-batching", "--host", "127.0.0.1", "--port", str(port)]
    command += extra or []
    proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    proc.log_path, proc.command = Path(log.name), command
    base = f"http://127.0.0.1:{port}"
    wait_until_ready(proc, f"{base}/health")
    return base, proc


def prompts(count: int = 8) -> list[list[int]]:
    """``count`` different prompts of PROMPT_TOKENS - 1 token ids (the end-of-text token goes
    before each: this service adds it, llama-server is sent it)."""
    from tokenizers import Tokenizer

    ids = Tokenizer.from_file(str(MODELS / "tokenizer.json")).encode(TEXT).ids
    return [ids[3 * k : 3 * k + PROMPT_TOKENS - 1] for k in range(count)]


def body(kind: str, prompt: list[int], stream: bool = False) -> dict:
    common = {"prompt": prompt, "max_tokens": NEW_TOKENS, "temperature": 0, "stream": stream}
    if kind == "service":
        return {**common, "model": "attention"}
    # llama-server: the end-of-text token sent, 64 tokens even past an end of text (this
    # service goes on too: it stops only at its stop strings), no reuse of cached prompts.
    return {**common, "prompt": [0, *prompt], "ignore_eos": True, "cache_prompt": False}


async def one(
    client: httpx.AsyncClient, base: str, kind: str, prompt: list[int]
) -> tuple[float, int, str]:
    started = time.perf_counter()
    answer = await client.post(f"{base}/v1/completions", json=body(kind, prompt), timeout=600)
    answer.raise_for_status()
    data = answer.json()
    return (
        time.perf_counter() - started,
        data["usage"]["completion_tokens"],
        data["choices"][0]["text"],
    )


async def first_token(client: httpx.AsyncClient, base: str, kind: str, prompt: list[int]) -> float:
    """Seconds to the first streamed chunk that carries text."""
    started = time.perf_counter()
    async with client.stream(
        "POST", f"{base}/v1/completions", json=body(kind, prompt, True), timeout=600
    ) as r:
        async for line in r.aiter_lines():
            data = line[5:].strip() if line.startswith("data:") else ""
            if data not in ("", "[DONE]") and json.loads(data)["choices"][0].get("text"):
                return time.perf_counter() - started
    raise RuntimeError(f"{base} streamed no text")


async def load(base: str, kind: str, clients: int, per_client: int, texts: list[list[int]]) -> dict:
    """``clients`` clients, each sending ``per_client`` requests one after the other."""
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=clients)) as client:

        async def worker(c: int) -> list[tuple[float, int, str]]:
            return [
                await one(client, base, kind, texts[(c + i) % len(texts)])
                for i in range(per_client)
            ]

        started = time.perf_counter()
        done = await asyncio.gather(*(worker(c) for c in range(clients)))
        wall = time.perf_counter() - started
        ttft = (
            [await first_token(client, base, kind, texts[i]) for i in range(4)]
            if clients == 1
            else []
        )
    latencies = sorted(s for w in done for s, _, _ in w)
    tokens = sum(n for w in done for _, n, _ in w)
    figures = {
        "requests": len(latencies),
        "new_tokens": tokens,
        "seconds": round(wall, 3),
        "tokens_per_s": round(tokens / wall, 1),
        "p50_ms": round(1000 * statistics.median(latencies), 1),
        "p99_ms": round(1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], 1),
    }
    if ttft:
        figures["ttft_p50_ms"] = round(1000 * statistics.median(ttft), 1)
    return figures


def alternate(
    servers: dict[str, tuple[str, str]],
    clients: list[int] | tuple[int, ...],
    rounds: int,
    per_client: Callable[[int], int],
    texts: list[list[int]],
) -> dict[str, dict[str, list[dict]]]:
    """``load`` of every server (name: (base URL, kind)) at each number of ``clients`` (the
    ONE_CLIENT ones at one), alternating servers within each round: {name: {clients: [figures
    of each round]}}."""
    runs = {name: {str(c): [] for c in clients} for name in servers}
    for r in range(rounds):
        for count in clients:
            for name, (base, kind) in servers.items():
                if name in ONE_CLIENT and count != 1:
                    continue
                figures = asyncio.run(load(base, kind, count, per_client(count), texts))
                runs[name][str(count)].append(figures)
                print(f"round {r + 1}, {count} clients, {name}: {figures}", flush=True)
    return runs


def greedy(base: str, kind: str, texts: list[list[int]]) -> list[str]:
    return [
        httpx.post(f"{base}/v1/completions", json=body(kind, p), timeout=120).json()["choices"][0][
            "text"
        ]
        for p in texts
    ]


def draft_counts(base: str) -> dict[str, float]:
    """The tokens a service drafted so far that its model kept and did not (its /metrics)."""
    text = httpx.get(f"{base}/metrics", timeout=30).text
    pattern = r'^machado_draft_tokens_total\{model="attention",outcome="(\w+)"\} (\S+)$'
    return {outcome: float(n) for outcome, n in re.findall(pattern, text, re.M)}


def hardware_limits(threads: int = 2) -> dict:
    """Memory copy bandwidth (``threads`` threads, each copying its part of 256 MiB) and float32
    matrix-product throughput of this machine."""
    from concurrent.futures import ThreadPoolExecutor

    parts = [np.ones(256 * 2**20 // 4 // threads, dtype=np.float32) for _ in range(threads)]
    outs = [np.empty_like(p) for p in parts]
    best = float("inf")
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(5):
            started = time.perf_counter()
            list(pool.map(np.copyto, outs, parts))  # numpy lets go of the GIL while it copies
            best = min(best, time.perf_counter() - started)
    a = np.random.default_rng(0).standard_normal((1024, 1024), dtype=np.float32)
    a @ a
    started = time.perf_counter()
    for _ in range(10):
        a @ a
    flops = 10 * 2 * 1024**3 / (time.perf_counter() - started)
    moved = 2 * sum(p.nbytes for p in parts)  # each byte read once and written once
    return {
        "memory_copy_gb_s": round(moved / best / 1e9, 1),
        "matmul_gflop_s": round(flops / 1e9, 1),
        "threads": threads,
    }


def score_bpc(base: str, text: str) -> float:
    answer = httpx.post(f"{base}/score", json={"model": "attention", "text": text}, timeout=900)
    answer.raise_for_status()
    return answer.json()["bits_per_character"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--llama-server", type=Path, default=None, help="llama-server's executable")
    parser.add_argument("--build", action="store_true", help="build llama-server if not found")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (3)")
    parser.add_argument("--threads", type=int, default=2, help="threads of each server (2)")
    parser.add_argument(
        "--score-chars",
        type=int,
        default=20_000,
        help="test characters scored per mode (20000; 0: none)",
    )
    parser.add_argument("--corpus", type=Path, default=None, help="corpus (../shared/...)")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args(argv)

    binary = find_llama_server(args.llama_server, args.build)
    ggufs = ROOT / "build" / "gguf"
    ggufs.mkdir(parents=True, exist_ok=True)
    servers, procs = {}, []
    try:
        for name, (kind, setting) in {**SYSTEMS, **ONE_CLIENT}.items():
            if kind == "service":
                env = {
                    "MACHADO_QUANTIZE": setting,
                    "MACHADO_THREADS": str(args.threads),
                    **SERVICE_PARALLEL,
                    **EXTRA.get(name, {}),
                }
                base, proc = start_server(env)
            else:
                gguf = write_gguf(
                    MODELS / "attention", ggufs / f"attention-{setting}.gguf", setting
                )
                base, proc = start_llama_server(binary, gguf, args.threads, EXTRA.get(name))
            servers[name] = (base, kind)
            procs.append(proc)
        texts = prompts()
        outputs = {name: greedy(base, kind, texts) for name, (base, kind) in servers.items()}
        agreement = {
            pair: sum(a == b for a, b in zip(outputs[x], outputs[y], strict=True)) / len(texts)
            for pair, (x, y) in {
                **PAIRS,
                "int8_vs_float32": ("service-int8", "service-float32"),
                "drafts_vs_none": ("service-float32", "service-float32-no-drafts"),
                "f16_ngram_vs_f16": ("llama-server-f16-ngram", "llama-server-f16"),
            }.items()
        }
        print(
            f"greedy completions identical (share of {len(texts)} prompts): {agreement}", flush=True
        )
        quality = {}
        if args.score_chars:
            from training.corpus import read_split, resolve_corpus_dir

            text = "\n".join(read_split(resolve_corpus_dir(args.corpus), "test"))[
                : args.score_chars
            ]
            for name in ("service-float32", "service-int8"):
                quality[name] = {
                    "test_bpc": score_bpc(servers[name][0], text),
                    "characters": len(text),
                }
            print(f"BPC on the first {len(text)} test characters: {quality}", flush=True)
        runs = alternate(servers, CLIENTS, args.rounds, lambda c: max(2, 16 // c), texts)
        drafts = {
            name: draft_counts(base) for name, (base, kind) in servers.items() if kind == "service"
        }
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(30)

    def median(name: str, clients: int, key: str) -> float:
        return statistics.median(f[key] for f in runs[name][str(clients)])

    summary = {
        name: {
            str(c): {k: median(name, c, k) for k in ("tokens_per_s", "p50_ms", "p99_ms")}
            | ({"ttft_p50_ms": median(name, c, "ttft_p50_ms")} if c == 1 else {})
            for c in CLIENTS
            if c == 1 or name not in ONE_CLIENT
        }
        for name in {**SYSTEMS, **ONE_CLIENT}
    }
    one_client = {
        f"{x}_vs_{y}": round(summary[x]["1"]["tokens_per_s"] / summary[y]["1"]["tokens_per_s"], 3)
        for x, y in [
            ("service-float32", "service-float32-no-drafts"),
            ("llama-server-f16-ngram", "llama-server-f16"),
            ("service-float32", "llama-server-f16-ngram"),
        ]
    }
    pairs = {
        pair: {
            f"ratio_{c}": round(
                summary[x][str(c)]["tokens_per_s"] / summary[y][str(c)]["tokens_per_s"], 3
            )
            for c in CLIENTS
        }
        | {
            "p99_32_ms": [summary[x]["32"]["p99_ms"], summary[y]["32"]["p99_ms"]],
            "greedy_identical": agreement[pair],
        }
        for pair, (x, y) in PAIRS.items()
    }
    parameters = json.loads((MODELS / "attention" / "card.json").read_text())["parameters"]
    # Bytes of weights a decode step reads (q8_0 and int8 keep a scale per 32 weights / row).
    weights = {"float32": parameters * 4, "f16": parameters * 2, "int8_q8_0": parameters * 1.06}
    result = {
        "cpu": cpu_name(),
        "model": "attention",
        "prompt_tokens": PROMPT_TOKENS,
        "new_tokens": NEW_TOKENS,
        "llama_server": {
            "binary": str(binary),
            "command": procs[1].command if len(procs) > 1 else None,
            "ngram_command": procs[-1].command if len(procs) > 1 else None,
        },
        "service_settings": SERVICE_PARALLEL,
        "hardware": hardware_limits(args.threads),
        "weight_bytes_per_token": weights,
        "quality": quality,
        "greedy_identical": agreement,
        "pairs": pairs,
        "one_client_drafting": one_client,
        "drafts": drafts,
        "summary": summary,
        "rounds": runs,
    }
    write_figures(result, args.json)
    print(
        json.dumps({"pairs": pairs, "summary": summary, "hardware": result["hardware"]}, indent=2)
    )
