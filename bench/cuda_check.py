"""ONNX Runtime's CUDA provider against its CPU provider, through the service's own loader and
engine (issue 4): logits and attention weights within a tolerance, greedy generations, and the
next-token latency at 64 tokens of context on each provider.

Every model of the models directory is loaded twice, once on each provider, the way the
service loads it. Run on a machine with a GPU and onnxruntime-gpu:

    python -m bench cuda-check --json benchmarks/ort-cuda-h100.json

Exits 1 if a model did not load on CUDA or a difference passes the tolerance. ``--allow-cpu``
rehearses the script where there is no GPU (both sides then run on the CPU provider).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

from bench.common import MODELS, cpu_name, gpu_name, timed, write_figures
from runtime.engine import Engine
from runtime.kv_cache import CachedContext, uses_kv_cache
from runtime.loader import CPU, CUDA, ProviderChoice, load_model
from runtime.results import GenerationRequest
from runtime.sampling import SamplingParams
from runtime.slots import SlotCache, slot_logits_gap
from service.settings import Settings

TEXT = (
    "Não tive filhos, não transmiti a nenhuma criatura o legado da nossa miséria. "
    "Capitu deu-me as costas, voltando-se para o espelhinho. Quincas Borba acordou "
    "tarde, e ficou algum tempo deitado, a pensar no que faria naquele dia. "
) * 8
PROMPT_TOKENS = 64


def timings(fn, runs: int, warmup: int) -> dict:
    ordered = sorted(timed(fn, runs, warmup))
    return {
        "median_ms": statistics.median(ordered),
        "p90_ms": ordered[int(0.9 * (len(ordered) - 1))],
        "p99_ms": ordered[int(0.99 * (len(ordered) - 1))],
        "runs": runs,
    }


def all_logits(engine: Engine, ids: np.ndarray) -> np.ndarray:
    positions = np.broadcast_to(np.arange(ids.shape[1]), ids.shape)
    return engine._logits(ids, positions)


def compare_model(cpu: Engine, gpu: Engine, rng: np.random.Generator, args) -> dict:
    context = cpu.context
    real = np.asarray(cpu.prompt_ids(TEXT), dtype=np.int64)
    inputs = {
        "random, batch 4 x full context": rng.integers(0, cpu.vocab_size, (4, context)),
        "real text, full context": real[None, :context],
        "real text, 1 token": real[None, :1],
        f"real text, {PROMPT_TOKENS} tokens": real[None, :PROMPT_TOKENS][:, -context:],
    }
    logits = {}
    for label, ids in inputs.items():
        a, b = all_logits(cpu, ids), all_logits(gpu, ids)
        logits[label] = {"shape": list(a.shape), "max_abs_diff": float(np.max(np.abs(a - b)))}
    if cpu.model.decoder_session is not None and gpu.model.decoder_session is not None:
        # The key/value cache graph: the prompt at once, then one token a call, on each side.
        caches = [CachedContext(e.model.decoder_session, context) for e in (cpu, gpu)]
        prompt, worst = real[: min(32, context - 1)].tolist(), 0.0
        for token in real[len(prompt) : min(len(real), context)].tolist()[:32]:
            a, b = (cache.next_logits(prompt) for cache in caches)
            worst = max(worst, float(np.max(np.abs(a - b))))
            prompt.append(token)
        logits["decoder with key/value cache, 32 steps"] = {"max_abs_diff": worst}
    result = {"logits": logits}
    slots = gpu.model
    if slots.slot_session is not None and cpu.model.decoder_session is not None:
        # The GPU's cache slots (float16 keys and values on CUDA) against the CPU's decoder.onnx:
        # reported apart, bounded by the loader's CUDA_SLOT_GAP rather than the tolerance.
        place = (slots.slot_device, slots.slot_dtype)
        cache = SlotCache(slots.slot_session, 1, slots.card["config"], *place)
        result["cache_slots"] = {
            "device": slots.slot_device,
            "dtype": np.dtype(slots.slot_dtype).name,
            "max_abs_diff_vs_cpu_decoder": slot_logits_gap(cache, cpu.model.decoder_session),
        }
    if cpu.model.has_attention:
        window = real[None, : min(64, context)]
        feed = {"input_ids": window, "positions": np.asarray([[window.shape[1] - 1]])}
        a = cpu.model.attention_session.run(["attentions"], feed)[0]
        b = gpu.model.attention_session.run(["attentions"], feed)[0]
        result["attention"] = {"shape": list(a.shape), "max_abs_diff": float(np.max(np.abs(a - b)))}
    greedy = SamplingParams(temperature=0.0)
    runs = [
        list(engine.generate(GenerationRequest(TEXT[:200], args.greedy_tokens, greedy, seed=0)))[-1]
        for engine in (cpu, gpu)
    ]
    ids_cpu = [s.id for s in runs[0].steps]
    ids_gpu = [s.id for s in runs[1].steps]
    same = next(
        (i for i, (x, y) in enumerate(zip(ids_cpu, ids_gpu, strict=False)) if x != y), len(ids_cpu)
    )
    result["greedy"] = {
        "tokens": len(ids_cpu),
        "identical": ids_cpu == ids_gpu,
        "first_difference": None if ids_cpu == ids_gpu else same,
    }
    prompt = real[:PROMPT_TOKENS].tolist()
    result["next_token_latency"] = {
        "prompt_tokens": len(prompt),
        "seen_tokens": min(len(prompt), context),
        "cpu": timings(lambda: cpu.next_logits(prompt), args.runs, args.warmup),
        "gpu": timings(lambda: gpu.next_logits(prompt), args.runs, args.warmup),
    }
    text = cpu.decode(prompt[1:])  # the 64-token prompt, after its end-of-text token

    def generate(engine: Engine) -> None:
        for _ in engine.generate(GenerationRequest(text, 64, greedy, seed=0)):
            pass

    result["generate_64_tokens"] = {
        "prompt_tokens": len(prompt),
        "kv_cache": {"cpu": uses_kv_cache(cpu.model), "gpu": uses_kv_cache(gpu.model)},
        "cpu": timings(lambda: generate(cpu), args.generations, 1),
        "gpu": timings(lambda: generate(gpu), args.generations, 1),
    }
    worst = max(
        [v["max_abs_diff"] for v in logits.values()]
        + ([result["attention"]["max_abs_diff"]] if "attention" in result else [])
    )
    result["max_abs_diff"] = worst
    result["within_tolerance"] = worst <= args.tolerance
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models-dir", type=Path, default=MODELS)
    parser.add_argument("--tolerance", type=float, default=1e-3, help="max |logit diff| (1e-3)")
    parser.add_argument("--threads", type=int, default=2, help="CPU provider threads (2)")
    parser.add_argument("--runs", type=int, default=300, help="timed next-token calls (300)")
    parser.add_argument("--warmup", type=int, default=30, help="untimed calls first (30)")
    parser.add_argument("--greedy-tokens", type=int, default=50, help="greedy tokens (50)")
    parser.add_argument(
        "--generations", type=int, default=10, help="timed 64-token generations (10)"
    )
    parser.add_argument("--allow-cpu", action="store_true", help="rehearse without a GPU")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args(argv)

    settings = Settings(models_dir=args.models_dir, threads=args.threads, provider="cuda")

    options = settings.load_options()
    folders = sorted(p.parent for p in args.models_dir.glob("*/card.json"))
    report: dict = {
        "gpu": gpu_name() or "none",
        "cpu": cpu_name(),
        "onnxruntime": ort.__version__,
        "available_providers": ort.get_available_providers(),
        "cpu_threads": args.threads,
        "tolerance": args.tolerance,
        "models": {},
    }
    # A check of nothing must not pass: an empty or misnamed folder is a failure, not a pass.
    failures = [] if folders else [f"no model folder (*/card.json) in {args.models_dir}"]
    rng = np.random.default_rng(0)
    for folder in folders:
        cpu_model = load_model(folder, options, {}, ProviderChoice([CPU], "reference"))
        gpu_model = load_model(folder, options, {}, ProviderChoice([CUDA, CPU], "checked"))
        entry: dict = {"cpu_provider": cpu_model.provider, "gpu_provider": gpu_model.provider}
        report["models"][folder.name] = entry
        if not (cpu_model.ready and gpu_model.ready):
            entry["error"] = cpu_model.error or gpu_model.error
            failures.append(f"{folder.name}: {entry['error']}")
            continue
        if gpu_model.provider != CUDA:
            entry["error"] = f"loaded on {gpu_model.provider}: {gpu_model.provider_reason}"
            if not args.allow_cpu:
                failures.append(f"{folder.name}: {entry['error']}")
                continue
        entry.update(compare_model(Engine(cpu_model), Engine(gpu_model), rng, args))
        if not entry["within_tolerance"]:
            failures.append(f"{folder.name}: max |diff| {entry['max_abs_diff']:.2e}")
        latency = entry["next_token_latency"]
        print(
            f"{folder.name}: max |logit diff| {entry['max_abs_diff']:.2e}, greedy "
            f"{'identical' if entry['greedy']['identical'] else 'differs'}; next-token at "
            f"{latency['prompt_tokens']} tokens: {gpu_model.provider} "
            f"{latency['gpu']['median_ms']:.2f} ms, CPU ({args.threads} threads) "
            f"{latency['cpu']['median_ms']:.2f} ms (medians)",
            flush=True,
        )
    report["failures"] = failures
    report["passed"] = not failures
    write_figures(report, args.json)
    for failure in failures:
        print(f"FAILED {failure}", file=sys.stderr)
    return 0 if not failures else 1
