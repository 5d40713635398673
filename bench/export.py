"""The exporter of this checkout against the shipped graphs, on the CPU (not a test).

Each shipped model's weights are read back from its graph (``torch_model_from_folder``), exported
again with ``training/export.py`` as it stands, and the two folders are compared:
- the largest difference of their next-token logits on a 64-token prompt (they must agree);
- one next-token call at 64 tokens of context (``python -m training report``'s measure), in rounds
  that alternate shipped and re-exported so that the machine's drift falls on both;
- the graph's nodes after ONNX Runtime's optimizations, by operator: what the runtime executes.

Run it before a release re-exports the shipped models: a new exporter must not make them slower.

    python -m bench export --json benchmarks/export-cpu.json
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort

from bench.common import MODELS, cpu_name, write_figures
from runtime.loader import open_model
from training import export
from training.checkpoint import save_checkpoint, torch_model_from_folder
from training.report import LATENCY_CONTEXT, measure_latency
from training.tokenizer import file_sha256


def reexport(folder: Path, out: Path, work: Path) -> Path:
    """``folder``'s model exported by this checkout into ``out/<name>``, stored as it was."""
    card = json.loads((folder / "card.json").read_text())
    tokenizer = folder.parent / card["tokenizer"]["file"]
    checkpoint = work / folder.name
    metadata = {"tokenizer_sha256": file_sha256(tokenizer)}
    save_checkpoint(checkpoint, torch_model_from_folder(folder), metadata)
    target = out / folder.name
    export.export_checkpoint(
        checkpoint, target, tokenizer, name=folder.name, storage=card["storage"]
    )
    return target


def optimized_ops(graph: Path, threads: int) -> dict[str, int]:
    """Nodes by operator of ``graph`` once ONNX Runtime has optimized it for the CPU."""
    ops = export.runtime_ops(graph, threads)
    return {"nodes": len(ops), **dict(collections.Counter(ops).most_common())}


def compare(shipped: Path, again: Path, threads: int, rounds: int, runs: int) -> dict:
    models = {"shipped": open_model(shipped, threads), "reexported": open_model(again, threads)}
    text = "Não tive filhos, não transmiti a nenhuma criatura o legado da nossa miséria. " * 8
    ids = models["shipped"].tokenizer.encode(text).ids[:LATENCY_CONTEXT]
    logits = {k: m.next_logits(ids) for k, m in models.items()}
    medians: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(rounds):
        for key, model in models.items():
            medians[key].append(measure_latency(model, runs=runs)["median_ms"])
    return {
        "opset": {k: m.card.get("opset") for k, m in models.items()},
        "max_abs_logit_difference": float(np.abs(logits["shipped"] - logits["reexported"]).max()),
        "next_token_ms": {
            key: {
                "median_of_round_medians": statistics.median(values),
                "best_round": min(values),
                "round_medians": values,
            }
            for key, values in medians.items()
        },
        "reexported_faster_in_rounds": sum(
            a > b for a, b in zip(medians["shipped"], medians["reexported"], strict=True)
        ),
        "optimized_graph": {
            "shipped": optimized_ops(shipped / "model.onnx", threads),
            "reexported": optimized_ops(again / "model.onnx", threads),
        },
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models-dir", type=Path, default=MODELS)
    parser.add_argument("--models", nargs="+", default=["attention", "attention-seed", "bengio"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=8, help="alternating rounds per model")
    parser.add_argument("--runs", type=int, default=200, help="calls per round")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)

    figures: dict = {
        "cpu": cpu_name(),
        "threads": args.threads,
        "onnxruntime": ort.__version__,
        "context_tokens": LATENCY_CONTEXT,
        "exporter_opset": export.OPSET,
        "models": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        out, work = Path(tmp) / "models", Path(tmp) / "checkpoints"
        for name in args.models:
            again = reexport(args.models_dir / name, out, work)
            result = compare(args.models_dir / name, again, args.threads, args.rounds, args.runs)
            figures["models"][name] = result
            ms = result["next_token_ms"]
            print(
                f"{name}: shipped {ms['shipped']['median_of_round_medians']:.3f} ms, re-exported "
                f"{ms['reexported']['median_of_round_medians']:.3f} ms (median of "
                f"{args.rounds} rounds; re-exported faster in "
                f"{result['reexported_faster_in_rounds']}); nodes "
                f"{result['optimized_graph']['shipped']['nodes']} -> "
                f"{result['optimized_graph']['reexported']['nodes']}; logits differ by "
                f"{result['max_abs_logit_difference']:.1e}",
                flush=True,
            )
    write_figures(figures, args.json)
