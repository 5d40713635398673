"""How good generated text is under each sampling setting (not a speed test): what the
playground's defaults are chosen by.

Prompts are fixed: the first words of evenly spaced long paragraphs of the validation split
(never the test split). From each, every model writes ``--tokens`` tokens under each setting,
and the text Machado wrote next is the human reference. Two figures per setting, as Holtzman
et al. (2020, "The Curious Case of Neural Text Degeneration") judge decoding:

- ``repeated_4grams``: the share of the continuation's 4-grams (of token ids) that already
  occurred earlier in it. Greedy text loops, so it scores high; human text has a low baseline.
- ``judge_bits_per_token``: the continuation's bits per token under one judge model (the
  attention model, reading the prompt too). Too few bits is bland or looping text; too many is
  incoherent; the human continuation's value is the target.

A setting's ``distance`` is the mean over models of |repeated - human's| plus
|bits - human's| / human's; the setting with the least distance is the suggested default.

    python -m bench generation --json benchmarks/generation-quality.json
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from bench.common import MODELS, write_figures
from runtime.engine import Engine
from runtime.loader import load_models
from runtime.options import LoadOptions
from runtime.results import Generation, GenerationRequest
from runtime.sampling import SamplingParams

SETTINGS = {
    "greedy (temperature 0)": SamplingParams(temperature=0.0),
    "greedy, repetition penalty 1.2": SamplingParams(temperature=0.0, repetition_penalty=1.2),
    "temperature 1 (the API's default)": SamplingParams(temperature=1.0),
    "temperature 1, top-p 0.95": SamplingParams(temperature=1.0, top_p=0.95),
    "temperature 1, top-p 0.9": SamplingParams(temperature=1.0, top_p=0.9),
    "temperature 0.9, top-p 0.95": SamplingParams(temperature=0.9, top_p=0.95),
    "temperature 0.8, top-k 40": SamplingParams(temperature=0.8, top_k=40),
    "temperature 0.8, top-k 40, repetition penalty 1.1": SamplingParams(0.8, 40, 1.0, 1.1),
    "temperature 0.8, top-k 40, repetition penalty 1.2": SamplingParams(0.8, 40, 1.0, 1.2),
    "temperature 0.9, top-p 0.95, repetition penalty 1.1": SamplingParams(0.9, 0, 0.95, 1.1),
    "temperature 0.7, top-p 0.95, repetition penalty 1.1": SamplingParams(0.7, 0, 0.95, 1.1),
    "temperature 1, top-p 0.95, repetition penalty 1.1": SamplingParams(1.0, 0, 0.95, 1.1),
}
JUDGE = "attention"


def repeated_ngrams(ids: list[int], n: int = 4) -> float:
    """The share of the n-grams of ``ids`` that occurred earlier in ``ids`` (0 for text too
    short to hold one)."""
    grams = [tuple(ids[i : i + n]) for i in range(len(ids) - n + 1)]
    if not grams:
        return 0.0
    seen: set[tuple[int, ...]] = set()
    repeats = 0
    for gram in grams:
        repeats += gram in seen
        seen.add(gram)
    return repeats / len(grams)


def prompts_from(documents: list[str], count: int, words: int, min_words: int = 400):
    """(prompt, what followed it) from ``count`` evenly spaced paragraphs of at least
    ``min_words`` words (the paragraph and the text after it, within its document)."""
    starts = []
    for text in documents:
        offset = 0
        for paragraph in text.split("\n"):
            rest = text[offset:]
            if len(paragraph.split()) >= 40 and len(rest.split()) >= min_words:
                starts.append(rest)
            offset += len(paragraph) + 1
    if len(starts) < count:
        raise ValueError(f"the split has {len(starts)} long paragraphs, {count} asked")
    picked = [starts[round(i * (len(starts) - 1) / max(count - 1, 1))] for i in range(count)]
    pairs = []
    for text in picked:
        tokens = text.split(" ")
        pairs.append((" ".join(tokens[:words]), " " + " ".join(tokens[words:])))
    return pairs


def judge_bits(judge: Engine, prompt: str, continuation_ids: list[int]) -> float:
    """Bits per token of ``continuation_ids`` after ``prompt`` under ``judge``."""
    ids = judge.prompt_ids(prompt)
    logprobs, _ = judge.token_logprobs([*ids, *continuation_ids])
    tail = np.asarray(logprobs[len(ids) - 1 :], dtype=np.float64)
    return float(-tail.mean() / np.log(2))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models-dir", type=Path, default=MODELS)
    parser.add_argument("--corpus", type=Path, default=None, help="corpus (../shared/...)")
    parser.add_argument("--prompts", type=int, default=16, help="fixed prompts (16)")
    parser.add_argument("--words", type=int, default=12, help="words of each prompt (12)")
    parser.add_argument("--tokens", type=int, default=256, help="tokens generated (256)")
    parser.add_argument("--seed", type=int, default=1, help="first seed; prompt i uses seed+i")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args(argv)
    from training.corpus import read_split, resolve_corpus_dir

    corpus = resolve_corpus_dir(args.corpus)
    pairs = prompts_from(read_split(corpus, "validation"), args.prompts, args.words)
    models = load_models(LoadOptions(models_dir=args.models_dir, provider="cpu"))
    engines = {name: Engine(m) for name, m in models.items() if m.ready}
    judge = engines[JUDGE]

    human_ids = [judge.encode(text)[: args.tokens] for _, text in pairs]
    human = {
        "repeated_4grams": float(np.mean([repeated_ngrams(ids) for ids in human_ids])),
        "judge_bits_per_token": float(
            np.mean(
                [judge_bits(judge, p, ids) for (p, _), ids in zip(pairs, human_ids, strict=True)]
            )
        ),
    }
    print(f"human text: {human}", flush=True)
    rows = {}
    for label, params in SETTINGS.items():
        per_model = {}
        for name, engine in engines.items():
            started = time.perf_counter()
            repeats, bits, samples = [], [], []
            for i, (prompt, _) in enumerate(pairs):
                request = GenerationRequest(prompt, args.tokens, params, seed=args.seed + i)
                result = [item for item in engine.generate(request)][-1]
                assert isinstance(result, Generation)
                ids = [step.id for step in result.steps]
                repeats.append(repeated_ngrams(ids))
                bits.append(judge_bits(judge, prompt, ids))
                if i < 2:
                    samples.append(prompt + result.text)
            per_model[name] = {
                "repeated_4grams": float(np.mean(repeats)),
                "judge_bits_per_token": float(np.mean(bits)),
                "samples": samples,
                "seconds": round(time.perf_counter() - started, 1),
            }
            print(
                f"{label} · {name}: {per_model[name]['repeated_4grams']:.3f} repeated, "
                f"{per_model[name]['judge_bits_per_token']:.2f} bits",
                flush=True,
            )
        distance = np.mean(
            [
                abs(f["repeated_4grams"] - human["repeated_4grams"])
                + abs(f["judge_bits_per_token"] - human["judge_bits_per_token"])
                / human["judge_bits_per_token"]
                for f in per_model.values()
            ]
        )
        rows[label] = {"params": params.__dict__, "distance": float(distance), "models": per_model}
    best = min(rows, key=lambda label: rows[label]["distance"])
    result = {
        "corpus": str(corpus),
        "split": "validation",
        "prompts": [p for p, _ in pairs],
        "tokens": args.tokens,
        "judge": JUDGE,
        "human": human,
        "settings": rows,
        "closest_to_human": best,
    }
    write_figures(result, args.json)
    names = list(engines)
    print(
        "\n| setting | "
        + " | ".join(f"{n}: repeated 4-grams / bits" for n in names)
        + " | distance |"
    )
    print("|---|" + "---|" * (len(names) + 1))
    print(
        f"| human continuation | {human['repeated_4grams']:.3f} / "
        f"{human['judge_bits_per_token']:.2f} |" + " |" * len(names)
    )
    for label, row in rows.items():
        cells = " | ".join(
            f"{row['models'][n]['repeated_4grams']:.3f} / "
            f"{row['models'][n]['judge_bits_per_token']:.2f}"
            for n in names
        )
        print(f"| {label} | {cells} | {row['distance']:.3f} |")
    print(f"\nclosest to human text: {best}")
