"""``python -m training starts``: how each model reads the start of a text.

The service scores every prompt as the start of a document (after an end-of-text token), as
/score, /compare and the playground show it. A model trained on windows laid at random offsets
rarely meets a window whose first token is end-of-text (the training split has 110 documents in
2.8 M tokens), so it could be worse at a text's first tokens than its test figure says. The
test split itself has two documents, too few starts to measure, so the starts here are its
paragraphs: each paragraph of at least ``LONGEST`` tokens is read twice by every model,

- alone, after an end-of-text token, as the service reads a prompt (``start``);
- after the paragraphs before it in its document, joined by a newline, as much of them as the
  model's context holds (``in_context``);

and the bits per character of its tokens at positions 1, 2-4, 5-16 and 17-64 are summed apart.
The same tokens are scored both ways, so the difference is what starting cold costs each model.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from runtime.hardware import cpu_label
from runtime.loader import LoadedModel, open_model
from training import corpus
from training.context import token_nll, weights_sha256
from training.tokenizer import END_OF_TEXT

# (first, last) token positions within a text, counted from 1; LONGEST is the last of them.
BUCKETS = ((1, 1), (2, 4), (5, 16), (17, 64))
LONGEST = BUCKETS[-1][1]
LOG2 = math.log(2)


def paragraphs(texts: list[str], tokenizer, minimum: int = LONGEST) -> list[dict[str, Any]]:
    """Each paragraph of ``texts`` with at least ``minimum`` tokens: its first ``minimum`` token
    ids, the characters each of them covers, and the ids of the paragraphs before it in its
    document (each followed by a newline's ids), the nearest last."""
    newline = tokenizer.encode("\n", add_special_tokens=False).ids
    found = []
    for text in texts:
        before: list[int] = []
        for paragraph in text.split("\n"):
            encoding = tokenizer.encode(paragraph, add_special_tokens=False)
            if len(encoding.ids) >= minimum:
                spans = encoding.offsets[:minimum]
                # A character split over several tokens counts once, for its first token.
                chars, reached = [], 0
                for start, end in spans:
                    chars.append(max(0, end - max(start, reached)))
                    reached = max(reached, end)
                found.append({"ids": encoding.ids[:minimum], "chars": chars, "before": before})
            before = [*before, *encoding.ids, *newline][-4096:]
    return found


def nll_of(model: LoadedModel, requests: list[tuple[list[int], list[int], list[int]]]) -> list:
    """For each (window, positions, targets): the NLL in nats of each target predicted at its
    position of the window. Requests of one shape run as one batch."""
    out: list = [None] * len(requests)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, (window, positions, _) in enumerate(requests):
        groups.setdefault((len(window), len(positions)), []).append(i)
    for (length, _), members in groups.items():
        rows = max(1, 16_384 // length)
        for first in range(0, len(members), rows):
            chosen = members[first : first + rows]
            ids = np.asarray([requests[i][0] for i in chosen], dtype=np.int64)
            positions = np.asarray([requests[i][1] for i in chosen], dtype=np.int64)
            targets = np.asarray([requests[i][2] for i in chosen], dtype=np.int64)
            nll = token_nll(model.logits(ids, positions), targets)  # (B, K)
            for row, i in enumerate(chosen):
                out[i] = nll[row]
    return out


def requests_for(model: LoadedModel, prefix: list[int], ids: list[int]) -> list:
    """What scores ``ids`` after ``prefix`` with this model, each target reading as much of
    what precedes it as the model's context holds (and no more than there is)."""
    context = model.context
    if context > LONGEST:  # one window: the prefix's end, then the text; causal, so one call
        head = prefix[-(context - LONGEST + 1) :]
        window = head + ids[: LONGEST - 1]
        positions = list(range(len(head) - 1, len(head) - 1 + LONGEST))
        return [(window, positions, ids[:LONGEST])]
    # A short context: one window per target, its last tokens.
    sequence = prefix + ids
    return [
        (
            sequence[max(0, len(prefix) + k - context) : len(prefix) + k],
            [min(context, len(prefix) + k) - 1],
            [ids[k]],
        )
        for k in range(LONGEST)
    ]


def measure_model(
    model: LoadedModel, texts: list[dict[str, Any]], eot: int, progress: bool
) -> dict:
    """One model's bits per character by position, alone and in context (see the docstring)."""
    started = time.perf_counter()
    chars = np.asarray([t["chars"] for t in texts], dtype=np.float64)  # (N, LONGEST)
    results = {}
    for name in ("start", "in_context"):
        requests, owners = [], []
        for text in tqdm(texts, desc=f"{model.card['name']}, {name}", disable=not progress):
            prefix = [eot] if name == "start" else [eot, *text["before"]]
            made = requests_for(model, prefix, text["ids"])
            requests += made
            owners.append(len(made))
        scored = nll_of(model, requests)
        rows, at = [], 0
        for count in owners:
            rows.append(np.concatenate(scored[at : at + count]))
            at += count
        nll = np.stack(rows)  # (N, LONGEST)
        buckets = {}
        for first, last in BUCKETS:
            part = slice(first - 1, last)
            bits = float(nll[:, part].sum() / LOG2)
            buckets[f"{first}-{last}" if first != last else str(first)] = {
                "tokens": int(nll[:, part].size),
                "characters": int(chars[:, part].sum()),
                "bits_per_token": bits / nll[:, part].size,
                "bits_per_character": bits / chars[:, part].sum(),
            }
        results[name] = buckets
    return {
        "context": model.context,
        "weights_sha256": weights_sha256(model.folder),
        "seconds": round(time.perf_counter() - started, 2),
        **results,
    }


def measure(
    models_dir: Path,
    corpus_dir: Path,
    split: str = "test",
    threads: int = 2,
    names: list[str] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    folders = sorted(p.parent for p in Path(models_dir).glob("*/card.json"))
    if names:
        folders = [f for f in folders if f.name in names]
    if not folders:
        raise FileNotFoundError(f"no model folder (*/card.json) in {models_dir}")
    models = [open_model(folder, threads) for folder in folders]
    tokenizer = models[0].tokenizer
    eot = tokenizer.token_to_id(END_OF_TEXT)
    texts = paragraphs(corpus.read_split(corpus_dir, split), tokenizer)
    return {
        "split": split,
        "texts": len(texts),
        "rule": f"paragraphs of at least {LONGEST} tokens, their first {LONGEST} scored alone "
        "after end-of-text (start) and after the paragraphs before them (in_context)",
        "cpu": cpu_label(),
        "models": {m.folder.name: measure_model(m, texts, eot, progress) for m in models},
        "command": "python -m training starts --json benchmarks/starts-test.json",
    }


def format_table(result: dict[str, Any]) -> str:
    """Markdown: bits per character by position, alone and in context, one row per model."""
    keys = [f"{a}-{b}" if a != b else str(a) for a, b in BUCKETS]
    head = " | ".join(f"{k}: start / in context" for k in keys)
    lines = [
        f"| model | {head} |",
        "|---" * (len(keys) + 1) + "|",
    ]
    for name, model in result["models"].items():
        cells = [
            f"{model['start'][k]['bits_per_character']:.3f} / "
            f"{model['in_context'][k]['bits_per_character']:.3f}"
            for k in keys
        ]
        lines.append(f"| `{name}` (context {model['context']}) | {' | '.join(cells)} |")
    return "\n".join(lines)


# The positions where a variant must not read a text's start worse than the seed model.
START_BUCKETS = ("1", "2-4")


def choose_variant(
    result: dict[str, Any], val_losses: dict[str, float], seed: str
) -> tuple[str, str]:
    """(the variant to ship, why): the lowest validation loss among the variants of
    ``val_losses`` that read a text's first token and tokens 2-4 (bits per character, alone
    after end-of-text, in ``result`` of ``measure``) no worse than the model ``seed``; where
    none does, the lowest validation loss all the same, said so."""
    models = result["models"]

    def start(name: str, bucket: str) -> float:
        return models[name]["start"][bucket]["bits_per_character"]

    fine = [
        name for name in val_losses if all(start(name, b) <= start(seed, b) for b in START_BUCKETS)
    ]
    pool = fine or list(val_losses)
    pick = min(pool, key=val_losses.get)
    figures = ", ".join(
        f"{n}: validation loss {val_losses[n]:.4f}, start "
        + " / ".join(f"{start(n, b):.3f}" for b in START_BUCKETS)
        for n in val_losses
    )
    seed_figures = " / ".join(f"{start(seed, b):.3f}" for b in START_BUCKETS)
    why = (
        f"{pick}: the lowest validation loss of the variants no worse than {seed} at a text's "
        f"tokens {' and '.join(START_BUCKETS)} ({seed_figures} bits per character)"
        if fine
        else f"{pick}: no variant reads a text's start as well as {seed} ({seed_figures}); "
        "the lowest validation loss"
    ) + f" [{figures}]"
    return pick, why
