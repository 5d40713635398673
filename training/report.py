"""``python -m training report``: models/README.md regenerated from the shipped model cards.

Reads every ``models/*/card.json`` and ``metrics.jsonl``, measures ONNX Runtime latency on this
CPU, draws the training curves and samples every model on the same prompts.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

from runtime.engine import Engine
from runtime.hardware import cpu_label
from runtime.loader import LoadedModel, open_model
from runtime.results import GenerationRequest
from runtime.sampling import SamplingParams
from training.context import plot as plot_context
from training.context import (
    range_label,
    summary,
    weights_sha256,
)
from training.heads import plot as plot_heads
from training.plot import plot_curves
from training.report_text import LATENCY_CONTEXT, render

PROMPTS = ("Capitu olhou para mim", "Não tive filhos, não transmiti", "A vida é")
SAMPLE_TOKENS = 40
SAMPLED = SamplingParams(temperature=0.8, top_k=40)
ORDER = {"attention": 0, "attention-seed": 1, "bengio": 2}


def complete(engine: Engine, request: GenerationRequest) -> str:
    """The completion's text, as the service's /generate makes it."""
    *_, final = engine.generate(request)
    return final.text


def measure_latency(model: LoadedModel, context: int = LATENCY_CONTEXT, runs: int = 200) -> dict:
    """Median and p90 of one next-token call with ``context`` tokens of prompt, in ms."""
    text = "Não tive filhos, não transmiti a nenhuma criatura o legado da nossa miséria. " * 8
    ids = model.tokenizer.encode(text).ids[:context]
    for _ in range(20):
        model.next_logits(ids)
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        model.next_logits(ids)
        samples.append((time.perf_counter() - start) * 1000)
    samples.sort()
    return {
        "context_tokens": len(ids),
        "runs": runs,
        "median_ms": statistics.median(samples),
        "p90_ms": samples[int(0.9 * (runs - 1))],
    }


def build_report(
    models_dir: Path,
    threads: int = 2,
    cuda_check: Path | None = None,
    quantize_bench: Path | None = None,
    context_bench: Path | None = None,
    heads_bench: Path | None = None,
    starts_bench: Path | None = None,
) -> dict[str, Any]:
    folders = sorted(
        (p.parent for p in models_dir.glob("*/card.json")),
        key=lambda p: (ORDER.get(p.name, 9), p.name),
    )
    if not folders:
        raise FileNotFoundError(f"{models_dir} holds no model folder with a card.json")
    models, histories, rows = {}, {}, []
    for folder in folders:
        model = open_model(folder, threads)
        models[folder.name] = model
        metrics_file = folder / "metrics.jsonl"
        if metrics_file.is_file():
            histories[folder.name] = [
                json.loads(line) for line in metrics_file.read_text().splitlines()
            ]
    for name, model in models.items():
        card = model.card
        latency = measure_latency(model)
        training = card["training"]
        rows.append(
            {
                "name": name,
                "kind": card["kind"],
                "parameters": card["parameters"],
                "context": card["context"],
                "tokens_seen": training["tokens_seen"],
                "training_seconds": training["training_seconds"],
                "hardware": training["hardware"],
                "latency": latency,
                "validation": card["metrics"].get("validation", {}),
                "test": card["metrics"].get("test", {}),
                "test_float16": card["metrics"].get("test_float16", {}),
            }
        )
    samples = {}
    for prompt in PROMPTS:
        samples[prompt] = {}
        for name, model in models.items():
            engine = Engine(model)
            samples[prompt][name] = {
                "greedy": complete(engine, GenerationRequest(prompt, SAMPLE_TOKENS)),
                "sampled": complete(
                    engine, GenerationRequest(prompt, SAMPLE_TOKENS, SAMPLED, seed=0)
                ),
            }
    if histories:
        plot_curves(
            [],
            models_dir / "curves.png",
            "training curves (validation over whole split)",
            runs=histories,
        )
    sweeps = {
        name: json.loads((models_dir / name / "sweep.json").read_text())
        for name in models
        if (models_dir / name / "sweep.json").is_file()
    }
    cuda = None
    if cuda_check is not None and cuda_check.is_file():
        cuda = json.loads(cuda_check.read_text())
        cuda["file"] = str(cuda_check)
    context = load_context(context_bench, models_dir)
    heads = load_heads(heads_bench, models_dir)
    int8 = None
    if quantize_bench is not None and quantize_bench.is_file():
        int8 = json.loads(quantize_bench.read_text())
        int8["file"] = str(quantize_bench)
        for name, by in int8["models"].items():  # a model replaced since is not described
            by["stale"] = by["float32"].get("weights_sha256") != weights_sha256(models_dir / name)
    return {
        "rows": rows,
        "sweeps": sweeps,
        "cuda": cuda,
        "int8": int8,
        "context": context,
        "heads": heads,
        "starts": _measurement(starts_bench, models_dir),
        "samples": samples,
        "threads": threads,
        "cpu": f"{cpu_label()}, {threads} ONNX Runtime threads",
        "curves": bool(histories),
    }


def _measurement(path: Path | None, models_dir: Path) -> dict[str, Any] | None:
    """A measurement of the shipped models (its ``models`` each with ``weights_sha256``), with
    its ``file`` and the models ``stale``: measured on weights since replaced. None: no file."""
    if path is None or not path.is_file():
        return None
    result = json.loads(path.read_text())
    result["file"] = str(path)
    result["stale"] = sorted(
        name
        for name, model in result["models"].items()
        if model.get("weights_sha256") != weights_sha256(models_dir / name)
    )
    return result


def load_context(context_bench: Path | None, models_dir: Path) -> dict[str, Any] | None:
    """The `training context` result, with the models measured on weights since replaced.

    Current: its plot is drawn to models/context.png. Stale: a plot left from before is removed,
    so models/ never shows curves of weights it no longer holds.
    """
    context = _measurement(context_bench, models_dir)
    if context is None:
        return None
    if context["stale"]:
        (models_dir / "context.png").unlink(missing_ok=True)
    else:
        plot_context(context, models_dir / "context.png")
    return context


def load_heads(heads_bench: Path | None, models_dir: Path) -> dict[str, Any] | None:
    """The `training heads` result, with the models measured on weights since replaced.

    Current: each model's example maps are drawn to models/heads-NAME.png. Stale: those figures
    are removed, so models/ never shows the heads of weights it no longer holds.
    """
    heads = _measurement(heads_bench, models_dir)
    if heads is None:
        return None
    for name in heads["models"]:
        figure = models_dir / f"heads-{name}.png"
        if heads["stale"]:
            figure.unlink(missing_ok=True)
        else:
            plot_heads(heads, name, figure)
    return heads


def write_report(
    models_dir: Path,
    threads: int = 2,
    cuda_check: Path | None = None,
    quantize_bench: Path | None = None,
    context_bench: Path | None = None,
    heads_bench: Path | None = None,
    starts_bench: Path | None = None,
) -> Path:
    report = build_report(
        models_dir, threads, cuda_check, quantize_bench, context_bench, heads_bench, starts_bench
    )
    saved = report
    if report["context"]:  # the per-length curves stay in their benchmark file
        context = report["context"]
        tables = {
            name: {range_label(*r): v for r, v in by.items()}
            for name, by in summary(context).items()
        }
        saved = {**report, "context": {**context, "models": tables}}
    if report["heads"]:  # the example maps stay in their benchmark file (and the figures)
        heads = report["heads"]
        models = {
            name: {k: v for k, v in model.items() if k != "example"}
            for name, model in heads["models"].items()
        }
        saved = {**saved, "heads": {**heads, "models": models}}
    (models_dir / "report.json").write_text(json.dumps(saved, indent=2, ensure_ascii=False) + "\n")
    path = models_dir / "README.md"
    path.write_text(render(report))
    return path
