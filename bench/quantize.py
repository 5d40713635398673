"""int8 weights (MACHADO_QUANTIZE=int8) against the shipped float weights, on the CPU (not a test).

For each shipped model, loaded through the runtime's loader and engine:
- bits per character on the whole test split (the service's /score computation, document by
  document), float32 and int8: what quantization costs;
- one next-token call at 64 tokens of context (the graph call alone) and 64 greedy new tokens
  (the engine, with the key/value cache where the model has one): what it gains;
and, for all models together, the seconds to load them and the process's resident memory after.
Writes JSON and prints a Markdown table. The int8 weights take the bits the service gives them on
this CPU (7 on x86 without VNNI, else 8: runtime/quantize.py), or ``--int8-bits``;
``--uint8-weights`` tries ONNX Runtime's other remedy for saturation, 8-bit unsigned weights
(U8U8 products), which the service does not use.

    python -m bench quantize --json benchmarks/quantize-cpu.json
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import runtime.loader
from bench.common import MODELS, ROOT, TEXT, cpu_name, percentiles, timed, write_figures
from runtime.engine import Engine
from runtime.loader import load_models
from runtime.quantize import int8_weight_bits, quantize_int8
from runtime.results import GenerationRequest
from runtime.sampling import SamplingParams
from service.settings import Settings

PRECISIONS = {"float32": "none", "int8": "int8"}


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load(models_dir: Path, precision: str, threads: int) -> tuple[dict, float]:
    settings = Settings(
        models_dir=models_dir, threads=threads, provider="cpu", quantize=PRECISIONS[precision]
    )
    start = time.perf_counter()
    models = load_models(settings.load_options())
    return models, time.perf_counter() - start


def use_weights(bits: int | None, unsigned: bool) -> int:
    """Make the registry quantize with ``bits``-bit weights (None: the service's choice), or
    8-bit unsigned ones; returns the bits."""
    if bits is None and not unsigned:
        return int8_weight_bits()
    bits = 8 if unsigned else bits
    runtime.loader.quantize_int8 = functools.partial(quantize_int8, weight_bits=bits)
    if unsigned:
        import onnxruntime.quantization as quantization

        signed = quantization.quantize_dynamic

        def with_unsigned_weights(*args, **kwargs):
            return signed(*args, **{**kwargs, "weight_type": quantization.QuantType.QUInt8})

        quantization.quantize_dynamic = with_unsigned_weights
    return bits


def footprint(models_dir: Path, precision: str, threads: int, weights: list[str]) -> dict:
    """Load time and resident memory of a fresh process that loads every model, its weights
    made as ``weights`` ([bits or "", "unsigned" or ""]) says."""
    code = (
        "import json, sys;"
        "from bench.quantize import load, rss_mib, use_weights; from pathlib import Path;"
        "use_weights(int(sys.argv[4]) if sys.argv[4] else None, sys.argv[5] == 'unsigned');"
        "models, seconds = load(Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]));"
        "print(json.dumps({'load_s': seconds, 'rss_mib': rss_mib()}))"
    )
    command = [sys.executable, "-c", code, str(models_dir), precision, str(threads)]
    out = subprocess.run(command + weights, capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_bpc(engine: Engine, documents: list[str]) -> float:
    nll, chars = 0.0, 0
    for text in documents:
        result = engine.score(text, per_token=False)
        nll += result.nll_nats
        chars += result.characters
    return nll / math.log(2) / chars


def measure(engine: Engine, documents: list[str], requests: int, generations: int) -> dict:
    model = engine.model
    ids = engine.prompt_ids(TEXT)[: min(64, engine.context)]
    window = np.asarray(ids, dtype=np.int64)[None]
    positions = np.asarray([[window.shape[1] - 1]])
    next_token = timed(
        lambda: model.session.run(["logits"], {"input_ids": window, "positions": positions}),
        requests,
    )
    params = SamplingParams(temperature=0.0)
    prompt = engine.decode(ids[1:])

    def generate() -> None:
        *_, last = engine.generate(GenerationRequest(prompt, 64, params, seed=0))
        assert len(last.steps) == 64

    return {
        "precision": model.precision,
        "weights_sha256": file_sha256(model.folder / "weights.bin"),
        "test_bpc": test_bpc(engine, documents) if documents else None,
        "next_token_tokens": int(window.shape[1]),
        "next_token_ms": percentiles(next_token),
        "generate_64_ms": percentiles(timed(generate, generations, warmup=1)),
        "kv_cache": model.decoder_session is not None,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models-dir", type=Path, default=MODELS)
    parser.add_argument("--corpus", type=Path, default=None, help="corpus (../shared/...)")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads (2)")
    parser.add_argument("--requests", type=int, default=200, help="next-token calls timed")
    parser.add_argument("--generations", type=int, default=10, help="generations timed")
    parser.add_argument("--no-bpc", action="store_true", help="skip the test-split scoring")
    parser.add_argument(
        "--int8-bits",
        type=int,
        choices=(7, 8),
        default=None,
        help="bits of the int8 weights (default: the service's choice on this CPU)",
    )
    parser.add_argument(
        "--uint8-weights",
        action="store_true",
        help="8-bit unsigned weights instead (U8U8 products: no saturation; not the service's)",
    )
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args(argv)
    bits = use_weights(args.int8_bits, args.uint8_weights)
    weights = [str(args.int8_bits or ""), "unsigned" if args.uint8_weights else ""]

    documents: list[str] = []
    split = None
    if not args.no_bpc:
        from training.corpus import read_split, resolve_corpus_dir

        corpus = resolve_corpus_dir(args.corpus)
        documents = read_split(corpus, "test")
        split = {"corpus": str(corpus), "split": "test", "documents": len(documents)}
    results: dict[str, dict] = {}
    for precision in PRECISIONS:
        models, _ = load(args.models_dir, precision, args.threads)
        for name, model in sorted(models.items()):
            if not model.ready:
                raise SystemExit(f"{name} did not load: {model.error}")
            figures = measure(Engine(model), documents, args.requests, args.generations)
            if figures["precision"] != precision:
                raise SystemExit(f"{name} loaded as {figures['precision']}, not {precision}")
            results.setdefault(name, {})[precision] = figures
            print(f"{name} {precision}: {json.dumps(figures)}", flush=True)
        del models
    result = {
        "cpu": cpu_name(),
        "threads": args.threads,
        "int8_weight_bits": bits,
        "int8_weights": "uint8" if args.uint8_weights else "int8",
        "scored": split,
        "models": results,
        "all_models_loaded": {
            p: footprint(args.models_dir, p, args.threads, weights) for p in PRECISIONS
        },
    }
    print(
        "\n| model | test BPC float32 → int8 | next-token ms (64 tokens) float32 → int8 "
        "| 64 new tokens ms float32 → int8 |\n|---|---|---|---|"
    )
    for name, by in results.items():
        f, q = by["float32"], by["int8"]
        bpc = (
            f"{f['test_bpc']:.4f} → {q['test_bpc']:.4f} ({q['test_bpc'] - f['test_bpc']:+.4f})"
            if f["test_bpc"] is not None
            else "not scored"
        )
        print(
            f"| `{name}` | {bpc} | {f['next_token_ms']['p50_ms']:.2f} → "
            f"{q['next_token_ms']['p50_ms']:.2f} | {f['generate_64_ms']['p50_ms']:.1f} → "
            f"{q['generate_64_ms']['p50_ms']:.1f} |"
        )
    loaded = result["all_models_loaded"]
    print(
        f"\nall models: load {loaded['float32']['load_s']:.1f} → {loaded['int8']['load_s']:.1f} s, "
        f"RSS {loaded['float32']['rss_mib']:.0f} → {loaded['int8']['rss_mib']:.0f} MiB"
    )
    write_figures(result, args.json)
