"""``python -m training report``: models/README.md regenerated from the shipped model cards.

Reads every ``models/*/card.json`` and ``metrics.jsonl``, measures ONNX Runtime latency on this
CPU, draws the training curves and samples every model on the same prompts.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

from training.context import (
    SHORT,
    bpc_scale,
    full_context,
    range_label,
    span,
    summary,
    weights_sha256,
)
from training.context import format_table as context_table
from training.context import plot as plot_context
from training.onnx_model import OnnxModel
from training.plot import plot_curves

PROMPTS = ("Capitu olhou para mim", "Não tive filhos, não transmiti", "A vida é")
LATENCY_CONTEXT = 64
ORDER = {"attention": 0, "attention-seed": 1, "bengio": 2}


def measure_latency(model: OnnxModel, context: int = LATENCY_CONTEXT, runs: int = 200) -> dict:
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


def _fmt(value: Any, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _metric(card: dict, split: str, key: str) -> float | None:
    return card["metrics"].get(split, {}).get(key)


def build_report(
    models_dir: Path,
    threads: int = 2,
    cuda_check: Path | None = None,
    quantize_bench: Path | None = None,
    context_bench: Path | None = None,
) -> dict[str, Any]:
    folders = sorted(
        (p.parent for p in models_dir.glob("*/card.json")),
        key=lambda p: (ORDER.get(p.name, 9), p.name),
    )
    if not folders:
        raise FileNotFoundError(f"{models_dir} holds no model folder with a card.json")
    models, histories, rows = {}, {}, []
    for folder in folders:
        model = OnnxModel(folder, threads)
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
            ids = model.tokenizer.encode(prompt).ids
            greedy = model.generate(ids, 40)
            sampled = model.generate(ids, 40, temperature=0.8, top_k=40, seed=0)
            samples[prompt][name] = {
                "greedy": model.tokenizer.decode(greedy),
                "sampled": model.tokenizer.decode(sampled),
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
        "samples": samples,
        "threads": threads,
        "cpu": f"{platform.processor() or platform.machine()}, {threads} ONNX Runtime threads",
        "curves": bool(histories),
    }


def render(report: dict[str, Any]) -> str:
    rows = {r["name"]: r for r in report["rows"]}
    lines = [
        "# Shipped models: attention vs. no attention",
        "",
        "Generated by `python -m training report` from the cards in this folder (do not edit by "
        "hand). Perplexity is per token; BPC is bits per character of the cleaned split "
        "(README.md, Bits per character). Every token of a split is scored once, seeing at least "
        "half a window of context.",
        "",
        "| model | kind | parameters | context | tokens seen | training | validation PPL / BPC "
        "| test PPL / BPC | next-token latency, 64-token prompt (ms, median / p90) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        seconds = "—" if r["training_seconds"] is None else f"{r['training_seconds']:.0f} s"
        tokens = "—" if r["tokens_seen"] is None else f"{r['tokens_seen'] / 1e6:.1f} M"
        lines.append(
            f"| `{r['name']}` | {r['kind']} | {r['parameters'] / 1e6:.2f} M | {r['context']} "
            f"| {tokens} | {seconds} on {r['hardware']} "
            f"| {_fmt(r['validation'].get('perplexity'), 1)} / "
            f"{_fmt(r['validation'].get('bits_per_character'))} "
            f"| {_fmt(r['test'].get('perplexity'), 1)} / "
            f"{_fmt(r['test'].get('bits_per_character'))} "
            f"| {r['latency']['median_ms']:.2f} / {r['latency']['p90_ms']:.2f} |"
        )
    lines += [
        "",
        f"Latency: ONNX Runtime on the CPU ({report['cpu']}), batch 1, one call that "
        "returns the next token's logits, measured by `python -m training report`. The "
        "Bengio model reads only its last 8 tokens of the 64.",
        "",
    ]
    if report.get("int8"):
        lines += _int8_section(report["int8"])
    if report.get("cuda"):
        lines += _cuda_section(report["cuda"])
    context = report.get("context")
    findings = _findings(rows, context if context and not context["stale"] else None)
    if findings:
        lines += ["## What the comparison shows", "", *findings, ""]
    if context:
        lines += _context_section(context)
    for name, sweep in report.get("sweeps", {}).items():
        lines += _sweep_section(name, sweep)
    if report["curves"]:
        lines += [
            "## Training curves",
            "",
            "![training curves](curves.png)",
            "",
            "Cross-entropy per token against tokens seen; faint lines are training loss "
            "(with dropout), dots are validation loss over the whole validation split.",
            "",
        ]
    lines += [
        "## Samples",
        "",
        "Each model continues the same prompts with 40 tokens: greedy, then sampled "
        "(temperature 0.8, top-k 40, seed 0).",
        "",
    ]
    for prompt, by_model in report["samples"].items():
        lines += [f"### «{prompt}»", ""]
        for name, sample in by_model.items():
            greedy = sample["greedy"].replace("\n", " ⏎ ")
            sampled = sample["sampled"].replace("\n", " ⏎ ")
            lines += [
                f"- `{name}` greedy: {prompt}**{greedy}**",
                f"- `{name}` sampled: {prompt}**{sampled}**",
            ]
        lines.append("")
    lines += [
        "## How each figure was made",
        "",
        "- Training, tokens seen, time, hardware: the `command` and `train_config` in each "
        "`card.json` (`training` section); the curves come from each folder's "
        "`metrics.jsonl`.",
        "- Validation and test perplexity and BPC: `python -m training evaluate "
        "CHECKPOINT --split validation|test` (and `--storage float16`, the shipped "
        "precision), recorded in each card's `metrics`.",
        "- Latency and samples: `python -m training report` (this file).",
        "",
    ]
    return "\n".join(lines)


def _int8_section(bench: dict[str, Any]) -> list[str]:
    lines = [
        "## int8 weights on the CPU",
        "",
        "What the service's `MACHADO_QUANTIZE=int8` does to each model (weights of every matrix "
        "product quantized to int8 at load, per output channel, activations on the fly; off by "
        "default, so the figures above are float32's). Test BPC is the service's `/score` "
        "summed over the test split; latency is one next-token call at 64 tokens of context and "
        f"64 greedy new tokens, on {bench['cpu']} with {bench['threads']} threads.",
        "",
        "| model | test BPC float32 → int8 | next-token ms float32 → int8 "
        "| 64 new tokens ms float32 → int8 |",
        "|---|---|---|---|",
    ]
    for name, by in bench["models"].items():
        f, q = by["float32"], by["int8"]
        if by.get("stale"):
            lines.append(f"| `{name}` | measured on weights since replaced: rerun | | |")
            continue
        bpc = (
            f"{f['test_bpc']:.4f} → {q['test_bpc']:.4f} ({q['test_bpc'] - f['test_bpc']:+.4f})"
            if f.get("test_bpc") is not None and q.get("test_bpc") is not None
            else "not scored"
        )
        lines.append(
            f"| `{name}` | {bpc} | {f['next_token_ms']['p50_ms']:.2f} → "
            f"{q['next_token_ms']['p50_ms']:.2f} | {f['generate_64_ms']['p50_ms']:.1f} → "
            f"{q['generate_64_ms']['p50_ms']:.1f} |"
        )
    lines += [
        "",
        f"Measured by `python scripts/bench_quantize.py --json {bench['file']}` "
        "(medians; BENCHMARKS.md has the rest).",
        "",
    ]
    return lines


def _cuda_section(cuda: dict[str, Any]) -> list[str]:
    lines = [
        "## On a GPU: ONNX Runtime's CUDA provider",
        "",
        f"The same graphs on `{cuda['gpu']}` with onnxruntime-gpu {cuda['onnxruntime']}, "
        "loaded by the service's own loader, against the CPU provider of the same host "
        f"({cuda['cpu']}, {cuda['cpu_threads']} threads). Next-token latency: batch 1, "
        "a 64-token prompt, the service's engine call (host to device copies included); "
        "64 greedy tokens after that prompt through the engine's generation (the attention "
        "model with its key/value cache).",
        "",
        "| model | provider | max \\|logit diff\\| vs CPU | 50 greedy tokens "
        "| next-token on GPU (ms, median / p90) | on that host's CPU (ms) "
        "| 64 greedy tokens on GPU / CPU (ms) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, m in cuda["models"].items():
        if "next_token_latency" not in m:
            lines.append(
                f"| `{name}` | {m.get('gpu_provider')} | failed: {m.get('error')} | | | | |"
            )
            continue
        gpu, cpu = m["next_token_latency"]["gpu"], m["next_token_latency"]["cpu"]
        greedy = (
            "identical"
            if m["greedy"]["identical"]
            else (f"differ from token {m['greedy']['first_difference']}")
        )
        generation = m.get("generate_64_tokens")
        generated = (
            f"{generation['gpu']['median_ms']:.1f} / {generation['cpu']['median_ms']:.1f}"
            if generation
            else "—"
        )
        lines.append(
            f"| `{name}` | {m['gpu_provider']} | {m['max_abs_diff']:.1e} | {greedy} "
            f"| {gpu['median_ms']:.2f} / {gpu['p90_ms']:.2f} | {cpu['median_ms']:.2f} "
            f"| {generated} |"
        )
    verdict = "within" if cuda["passed"] else "NOT within"
    lines += [
        "",
        f"Every difference is {verdict} the tolerance of {cuda['tolerance']:g}. Measured by "
        f"`python scripts/ort_cuda_check.py --json {cuda['file']}` (scripts/gpu_finish.sh).",
        "",
    ]
    return lines


def load_context(context_bench: Path | None, models_dir: Path) -> dict[str, Any] | None:
    """The `training context` result, with the models measured on weights since replaced.

    Current: its plot is drawn to models/context.png. Stale: a plot left from before is removed,
    so models/ never shows curves of weights it no longer holds.
    """
    if context_bench is None or not context_bench.is_file():
        return None
    context = json.loads(context_bench.read_text())
    context["file"] = str(context_bench)
    context["stale"] = sorted(
        name
        for name, curve in context["models"].items()
        if curve.get("weights_sha256") != weights_sha256(models_dir / name)
    )
    if context["stale"]:
        (models_dir / "context.png").unlink(missing_ok=True)
    else:
        plot_context(context, models_dir / "context.png")
    return context


def _context_section(context: dict[str, Any]) -> list[str]:
    heading = ["## How much context each model uses", ""]
    if context["stale"]:
        return [
            *heading,
            f"Measured on weights since replaced ({', '.join(context['stale'])}): rerun "
            f"`python -m training context --json {context['file']}`.",
            "",
        ]
    windows = "; ".join(
        f"`{name}` "
        + " and ".join(
            f"{w['count']:,} windows of {w['length']} tokens (one every {w['stride']})"
            for w in curve["windows"]
        )
        + f", {curve['seconds']:.0f} s"
        for name, curve in context["models"].items()
    )
    return [
        *heading,
        f"Bits per character on the {context['split']} split when the prediction reads exactly "
        "the given number of tokens (a range: the mean over its lengths), ± two standard "
        "errors. Windows of a model's context are laid over the split every context / "
        f"{context['coverage']} tokens, and position p of a window reads p + 1 tokens; for the "
        f"attention model, lengths up to {SHORT} come from windows of {SHORT} tokens, one every "
        f"{max(1, SHORT // context['coverage'])}, so they rest on as many targets as the "
        f"{SHORT}-token models' do. Bits per token become bits per "
        "character through the split's tokens per character. The Bengio model pads a shorter "
        "window with end-of-text, as at a document's start. The card's figure (last column) "
        "scores every token once, seeing half a window to a whole one.",
        "",
        context_table(context),
        "",
        "![loss against context length](context.png)",
        "",
        f"ONNX Runtime on the CPU ({context['cpu']}): {windows}. Measured by "
        f"`python -m training context --split {context['split']} --coverage "
        f"{context['coverage']} --json {context['file']}`.",
        "",
    ]


def _sweep_section(name: str, sweep: dict[str, Any]) -> list[str]:
    from training.sweep import format_table

    factors = " ".join(
        f"--vary {key}={','.join(str(v) for v in values)}"
        for key, values in sweep["factors"].items()
    )
    hardware = {t.get("hardware") for t in sweep["trials"].values() if t.get("hardware")}
    return [
        f"## How `{name}` was tuned (validation split only)",
        "",
        f"One factor at a time around the `{sweep['preset']}` preset, then the best value of "
        "every factor together; each trial the same command, step budget and seed, "
        f"{len(sweep['trials'])} trials on {', '.join(sorted(hardware)) or 'unknown hardware'} "
        f"in {sweep['seconds'] / 60:.1f} min. Chosen: `{sweep['chosen']}`.",
        "",
        format_table(sweep),
        "",
        f"`python -m training sweep --model {sweep['model']} --preset {sweep['preset']} "
        f"{factors} -- {' '.join(a for a in sweep['train_args'])}`",
        "",
    ]


def _findings(rows: dict[str, dict], context: dict[str, Any] | None = None) -> list[str]:
    def bpc(name: str, split: str = "test") -> float | None:
        return rows.get(name, {}).get(split, {}).get("bits_per_character")

    out = []
    attention, bengio, seed = bpc("attention"), bpc("bengio"), bpc("attention-seed")
    if attention is not None and bengio is not None:
        out.append(
            f"- **Attention wins.** On the test split the attention model reaches "
            f"{attention:.3f} BPC against {bengio:.3f} for the Bengio MLP: "
            f"{bengio - attention:.3f} bits per character less "
            f"({(1 - attention / bengio) * 100:.1f} % fewer bits), with "
            f"{rows['attention']['parameters'] / 1e6:.1f} M parameters against "
            f"{rows['bengio']['parameters'] / 1e6:.1f} M. It sees "
            f"{rows['attention']['context']} tokens where the MLP sees "
            f"{rows['bengio']['context']}."
        )
    if seed is not None and bengio is not None:
        verdict = "beats" if seed < bengio else "does not beat"
        out.append(
            f"- **At equal context** ({rows['attention-seed']['context']} tokens), the course "
            f"notebook's one-layer, one-head attention model {verdict} the Bengio MLP: "
            f"{seed:.3f} against {bengio:.3f} BPC, with "
            f"{rows['attention-seed']['parameters'] / 1e6:.1f} M parameters against "
            f"{rows['bengio']['parameters'] / 1e6:.1f} M."
            + (
                f" The two attention models differ by {seed - attention:.3f} BPC: depth, width "
                "and a longer context together."
                if attention is not None
                else ""
            )
        )
    if context is not None:
        out += _lead_finding(context, rows)
    for name, row in rows.items():
        full, half = (
            row["test"].get("bits_per_character"),
            row["test_float16"].get("bits_per_character"),
        )
        if full is not None and half is not None:
            out.append(
                f"- `{name}` is stored in float16: test BPC {half:.5f} against "
                f"{full:.5f} in float32 ({half - full:+.5f}), for half the disk."
            )
    return out


def _lead_finding(context: dict[str, Any], rows: dict[str, dict]) -> list[str]:
    """The attention model's lead over the MLP, split at the MLP's context: what is there
    reading the same n tokens, and what reading more adds."""
    models = context["models"]
    if not {"attention", "bengio"} <= set(models):
        return []
    n = models["bengio"]["length"]
    names = [name for name in ("attention", "attention-seed", "bengio") if name in models]
    if any(models[name]["length"] < n for name in names):
        return []
    at = {name: span(models[name], n, n, bpc_scale(context))[0] for name in names}
    full = full_context(context, "attention")[0]
    seen = {name: rows.get(name, {}).get("tokens_seen") for name in ("attention", "bengio")}
    scores = f"the attention model scores {at['attention']:.3f} BPC" + (
        f", the seed model {at['attention-seed']:.3f}" if "attention-seed" in at else ""
    )
    return [
        f"- **Where the lead comes from** (the context section below). Reading the same {n} "
        f"tokens, {scores} and the Bengio MLP {at['bengio']:.3f}. So of the attention model's "
        f"lead over the MLP ({at['bengio'] - full:.3f} BPC in this measurement), "
        f"{at['bengio'] - at['attention']:.3f} is already there at equal context, and "
        f"{at['attention'] - full:.3f} comes from reading up to {models['attention']['length']} "
        f"tokens. Equal context is not equal model or training: at {n} tokens the attention "
        "model still has its depth and width"
        + (
            f", and it saw {seen['attention'] / 1e6:.0f} M training tokens against "
            f"{seen['bengio'] / 1e6:.0f} M for the MLP."
            if None not in seen.values()
            else "."
        )
    ]


def write_report(
    models_dir: Path,
    threads: int = 2,
    cuda_check: Path | None = None,
    quantize_bench: Path | None = None,
    context_bench: Path | None = None,
) -> Path:
    report = build_report(models_dir, threads, cuda_check, quantize_bench, context_bench)
    saved = report
    if report["context"]:  # the per-length curves stay in their benchmark file
        context = report["context"]
        tables = {
            name: {range_label(*r): v for r, v in by.items()}
            for name, by in summary(context).items()
        }
        saved = {**report, "context": {**context, "models": tables}}
    (models_dir / "report.json").write_text(json.dumps(saved, indent=2, ensure_ascii=False) + "\n")
    path = models_dir / "README.md"
    path.write_text(render(report))
    return path
