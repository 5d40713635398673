"""Cost of choosing a token on real logits (not a test): the sampling step of every generation.

Takes the next-token logits of the shipped attention model after a few prompts, then times
`runtime.sampling.choose` for common settings, and the top-p filter against the same filter by
a full sort of the vocabulary (its definition, and how it was computed before). Writes JSON and
prints a Markdown table.

    python -m bench sampling --json benchmarks/sampling-cpu.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from bench.common import MODELS, cpu_name, percentiles, timed, write_figures
from runtime.engine import Engine
from runtime.loader import load_models
from runtime.sampling import SamplingParams, choose, filter_top_p, log_softmax
from service.settings import Settings

PROMPTS = ["Capitu olhou para mim", "Era uma vez", "Não tive filhos, não transmiti"]
SETTINGS = {
    "greedy": SamplingParams(temperature=0.0),
    "temperature 1": SamplingParams(temperature=1.0),
    "temperature 0.8, top-k 40": SamplingParams(temperature=0.8, top_k=40),
    "temperature 0.8, top-p 0.95": SamplingParams(temperature=0.8, top_p=0.95),
    "temperature 1, top-p 0.9, repetition penalty 1.2": SamplingParams(1.0, 0, 0.9, 1.2),
    "temperature 1, frequency and presence penalties 0.5 (32 tokens generated)": SamplingParams(
        1.0, frequency_penalty=0.5, presence_penalty=0.5
    ),
    "temperature 1, logit_bias of 300 tokens": SamplingParams(
        1.0, logit_bias=tuple((i, -1.0) for i in range(0, 3000, 10))
    ),
}


def top_p_by_full_sort(logits: np.ndarray, p: float) -> np.ndarray:
    """The definition, sorting every logit: what filter_top_p must equal (what the
    benchmark times it against)."""
    order = np.argsort(-logits, kind="stable")
    probs = np.exp(log_softmax(logits[order]))
    keep = np.cumsum(probs) - probs < p
    keep[0] = True
    out = np.full_like(logits, -np.inf, dtype=np.float64)
    out[order[keep]] = logits[order[keep]]
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models-dir", type=Path, default=MODELS)
    parser.add_argument("--calls", type=int, default=2000, help="timed calls of each (2000)")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args(argv)

    model = load_models(Settings(models_dir=args.models_dir, provider="cpu").load_options())[
        "attention"
    ]
    engine = Engine(model)
    logits = [engine.next_logits(engine.prompt_ids(p)) for p in PROMPTS]
    seen = engine.prompt_ids(PROMPTS[-1])
    generated = [int(i) for i in np.random.default_rng(1).integers(0, len(logits[0]), 32)]
    rng = np.random.default_rng(0)
    per_call = max(1, args.calls // len(logits))
    choose_us = {}
    for label, params in SETTINGS.items():
        samples = []
        for row in logits:
            samples += timed(lambda r=row, s=params: choose(r, s, seen, rng, generated), per_call)
        figures = percentiles(samples)
        choose_us[label] = {"p50_us": figures["p50_ms"] * 1000, "p99_us": figures["p99_ms"] * 1000}
    nucleus = {}
    for p in (0.9, 0.95, 0.99):
        scaled = [row.astype(np.float64) / 0.8 for row in logits]
        for row in scaled:  # the filter and its definition agree on these logits
            same = np.isfinite(filter_top_p(row, p)) == np.isfinite(top_p_by_full_sort(row, p))
            assert same.all()
        fast, full = [], []
        for row in scaled:
            fast += timed(lambda r=row, q=p: filter_top_p(r, q), per_call)
            full += timed(lambda r=row, q=p: top_p_by_full_sort(r, q), per_call)
        kept = [int(np.isfinite(filter_top_p(row, p)).sum()) for row in scaled]
        nucleus[str(p)] = {
            "tokens_kept": kept,
            "filter_top_p_us": percentiles(fast)["p50_ms"] * 1000,
            "full_sort_us": percentiles(full)["p50_ms"] * 1000,
        }
    result = {
        "cpu": cpu_name(),
        "vocabulary": int(logits[0].shape[-1]),
        "prompts": PROMPTS,
        "choose_us": choose_us,
        "top_p": nucleus,
    }
    print(json.dumps(result, indent=2))
    print("\n| sampling setting | `choose` p50 µs |\n|---|---|")
    for label, figures in choose_us.items():
        print(f"| {label} | {figures['p50_us']:.1f} |")
    print("\n| top-p | tokens kept (per prompt) | filter p50 µs | full sort p50 µs |")
    print("|---|---|---|---|")
    for p, figures in nucleus.items():
        print(
            f"| {p} | {figures['tokens_kept']} | {figures['filter_top_p_us']:.1f} "
            f"| {figures['full_sort_us']:.1f} |"
        )
    write_figures(result, args.json)
