"""``python -m training context``: how each model's loss falls as it reads more context.

The question behind "attention vs. no attention": how much of what a model reads does it use?
For every shipped model (its ONNX graph on the CPU), windows of the model's context length are
laid over a split's token stream, one every ``length / coverage`` tokens. The prediction at
position ``p`` of a window reads exactly ``p + 1`` tokens, so averaging each position over all
windows gives the cross-entropy at every context length from 1 token to the model's context.
Each position of each window is a different target token; the windows overlap, so every token
of the split is scored ``coverage`` times overall, once per context length at most. A model whose
context is longer than 8 tokens is read a second time through windows of 8, one every
``8 / coverage`` tokens (``splice``): its short lengths then rest on as many targets as the
8-token models' do.

Bits per character at a context length: its mean bits per token times the split's tokens per
character (the windows start at every ``stride``-th token, so every context length averages over
the same kind of tokens). Before position ``p < n - 1`` of a window the Bengio model fills the
tokens it misses with end-of-text, as at the start of a document: at 1 to ``n - 1`` tokens it
reads the way it reads a document's first tokens, in training and in the service alike.
"""

from __future__ import annotations

import hashlib
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from runtime.hardware import cpu_label
from runtime.loader import LoadedModel, open_model

# Lengths up to SHORT come from windows of SHORT tokens (many targets each, see ``splice``); the
# longer ones from windows of the model's context, so tables group them into ranges.
SHORT = 8
LOG2 = math.log(2)


def table_ranges(longest: int) -> list[tuple[int, int]]:
    """The (first, last) context lengths a table shows: 1, 2, 4 and 8 alone, then ranges four
    times longer each (9-32, 33-128, ...) up to half the longest context, then its upper half
    (for 256: 129-256, what the evaluation command scores). Every length is in the JSON."""
    ranges = [(c, c) for c in (1, 2, 4, SHORT) if c <= longest]
    first = SHORT + 1
    while first <= longest // 2:
        last = min(first * 4 - 4, longest // 2)
        ranges.append((first, last))
        first = last + 1
    if first <= longest:
        ranges.append((first, longest))
    return ranges


def token_nll(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Negative log-likelihood in nats of ``targets`` (B, T) under ``logits`` (B, T, V)."""
    logits = logits.astype(np.float64)
    top = logits.max(-1, keepdims=True)
    log_norm = np.log(np.exp(logits - top).sum(-1)) + top[..., 0]
    return log_norm - np.take_along_axis(logits, targets[..., None], -1)[..., 0]


def context_curve(
    model: LoadedModel,
    tokens: np.ndarray,
    length: int | None = None,
    coverage: int = 4,
    batch_tokens: int = 2048,
    progress: bool = False,
) -> dict[str, Any]:
    """Per context length 1..length: how many targets were scored, their NLL's mean and spread.

    ``length`` defaults to the model's context; windows start every ``length // coverage``
    tokens (at least 1). ``progress`` draws a bar on stderr.
    """
    length = length or model.context
    if coverage < 1:
        raise ValueError(f"coverage must be at least 1, not {coverage}")
    if length > model.context:
        raise ValueError(f"length {length} exceeds {model.card['name']}'s context {model.context}")
    if len(tokens) < length + 1:
        raise ValueError(f"the stream has {len(tokens)} tokens, fewer than a window and its target")
    stride = max(1, length // coverage)
    starts = np.arange(0, len(tokens) - length, stride)
    offsets = np.arange(length)
    total = np.zeros(length)
    squares = np.zeros(length)
    rows = max(1, batch_tokens // length)
    started = time.perf_counter()
    name = model.card["name"]
    with tqdm(
        total=len(starts),
        desc=f"{name}, {length}-token windows",
        unit="window",
        disable=not progress,
    ) as bar:
        for first in range(0, len(starts), rows):
            index = starts[first : first + rows, None] + offsets
            nll = token_nll(model.logits(tokens[index]), tokens[index + 1])
            total += nll.sum(0)
            squares += (nll**2).sum(0)
            bar.update(len(index))
    mean = total / len(starts)
    std = np.sqrt(np.maximum(squares / len(starts) - mean**2, 0.0))
    return {
        "length": length,
        "windows": [{"length": length, "stride": stride, "count": len(starts)}],
        "seconds": round(time.perf_counter() - started, 2),
        "count": [len(starts)] * length,
        "mean_nats": mean.tolist(),
        "std_nats": std.tolist(),
    }


def splice(short: dict[str, Any], long: dict[str, Any]) -> dict[str, Any]:
    """The long windows' curve with its first lengths taken from denser short windows.

    A causal model's prediction at position ``p`` reads the same ``p + 1`` tokens whatever the
    window's length, so short windows laid densely give the short lengths more targets for the
    same work.
    """
    n = short["length"]
    return {
        "length": long["length"],
        "windows": short["windows"] + long["windows"],
        "seconds": round(short["seconds"] + long["seconds"], 2),
        **{k: short[k] + long[k][n:] for k in ("count", "mean_nats", "std_nats")},
    }


def weights_sha256(folder: Path) -> str:
    """The hash of a model folder's weights: a result measured on other weights is stale."""
    weights = folder / "weights.bin"
    return hashlib.sha256(weights.read_bytes()).hexdigest() if weights.is_file() else ""


def check_tokenizer(model: LoadedModel, meta: dict[str, Any], data_dir: Path) -> None:
    """Refuses a model whose tokenizer is not the one ``data_dir`` was prepared with."""
    if model.card["tokenizer"]["sha256"] != meta["tokenizer_sha256"]:
        raise ValueError(
            f"{model.folder.name} uses tokenizer {model.card['tokenizer']['sha256'][:12]}, but "
            f"{data_dir} was prepared with {meta['tokenizer_sha256'][:12]}"
        )


def measure(
    models_dir: Path,
    data_dir: Path,
    split: str = "test",
    coverage: int = 4,
    threads: int = 2,
    names: list[str] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """The context curve of every model folder (or those named) over one split."""
    from training import data

    meta = data.load_meta(data_dir)
    tokens = data.load_split(data_dir, split)
    folders = sorted(p.parent for p in models_dir.glob("*/card.json"))
    if names:
        missing = sorted(set(names) - {f.name for f in folders})
        if missing:
            raise FileNotFoundError(f"no model folder {', '.join(missing)} in {models_dir}")
        folders = [f for f in folders if f.name in names]
    if not folders:
        raise FileNotFoundError(f"{models_dir} holds no model folder with a card.json")
    split_meta = meta["splits"][split]
    result: dict[str, Any] = {
        "split": split,
        "tokens": int(split_meta["tokens"]),
        "characters": int(split_meta["characters"]),
        "coverage": coverage,
        "cpu": f"{cpu_label()}, {threads} ONNX Runtime threads",
        "models": {},
    }
    for folder in folders:
        model = open_model(folder, threads)
        check_tokenizer(model, meta, data_dir)
        curve = context_curve(model, tokens, coverage=coverage, progress=progress)
        if model.context > SHORT:
            short = context_curve(model, tokens, length=SHORT, coverage=coverage, progress=progress)
            curve = splice(short, curve)
        curve["weights_sha256"] = weights_sha256(folder)
        curve["kind"] = model.card["kind"]
        curve["card_bpc"] = model.card["metrics"].get(split, {}).get("bits_per_character")
        result["models"][folder.name] = curve
    return result


def bpc_scale(result: dict[str, Any]) -> float:
    """Nats per token -> bits per character of the split the result scored."""
    return result["tokens"] / result["characters"] / LOG2


def span(curve: dict[str, Any], first: int, last: int, scale: float) -> tuple[float, float]:
    """Mean of lengths ``first..last`` (targets weighted alike) and two standard errors."""
    rows = slice(first - 1, last)
    count = np.asarray(curve["count"][rows], dtype=np.float64)
    mean = np.asarray(curve["mean_nats"][rows])
    var = np.asarray(curve["std_nats"][rows]) ** 2
    n = count.sum()
    return float((mean * count).sum() / n * scale), float(
        2 * math.sqrt((var * count).sum()) / n * scale
    )


def summary(result: dict[str, Any]) -> dict[str, dict[tuple[int, int], tuple[float, float]]]:
    """{model: {(first, last) context length: (BPC, two standard errors)}} at ``table_ranges``.

    Standard errors treat targets as independent; the same token is a target at up to
    ``coverage`` lengths, so they are a guide, not an exact interval.
    """
    scale = bpc_scale(result)
    ranges = table_ranges(max(m["length"] for m in result["models"].values()))
    return {
        name: {
            (first, last): span(curve, first, last, scale)
            for first, last in ranges
            if last <= curve["length"]
        }
        for name, curve in result["models"].items()
    }


def full_context(result: dict[str, Any], name: str) -> tuple[float, float]:
    """BPC and two standard errors over the upper half of the model's context: what the
    evaluation command (and the card) scores, each token seeing half a window to a whole one."""
    curve = result["models"][name]
    scale = bpc_scale(result)
    return span(curve, curve["length"] // 2 + 1, curve["length"], scale)


def range_label(first: int, last: int) -> str:
    return f"{first}" if first == last else f"{first}–{last}"


def format_table(result: dict[str, Any]) -> str:
    ranges = table_ranges(max(m["length"] for m in result["models"].values()))
    lines = [
        "| model | "
        + " | ".join(range_label(*r) for r in ranges)
        + f" | card's {result['split']} BPC |",
        "|---|" + "---|" * (len(ranges) + 1),
    ]
    for name, by_range in summary(result).items():
        cells = [
            f"{by_range[r][0]:.3f} ± {by_range[r][1]:.3f}" if r in by_range else "" for r in ranges
        ]
        card = result["models"][name].get("card_bpc")
        cells.append("—" if card is None else f"{card:.3f}")
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_bins(length: int) -> list[tuple[int, int]]:
    """Half-octave ranges of lengths past ``SHORT`` up to ``length``: 9-12, 13-16, 17-24, ..."""
    edges, octave = [], SHORT
    while octave < length:
        edges += [min(octave * 3 // 2, length), min(octave * 2, length)]
        octave *= 2
    edges = sorted(set(edges))
    if not edges:
        return []
    return list(zip([SHORT + 1] + [e + 1 for e in edges[:-1]], edges, strict=True))


def plot(result: dict[str, Any], path: Path) -> None:
    """Bits per character against context length (log scale), ±2 standard errors shaded.

    Past ``SHORT`` tokens each length rests on few targets, so the curve there is drawn faint
    and the means over half-octave ranges are drawn over it, with their error bars.
    """
    from training.plot import plt

    scale = bpc_scale(result)
    longest = max(m["length"] for m in result["models"].values())
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for i, (name, curve) in enumerate(result["models"].items()):
        color = f"C{i}"
        lengths = np.arange(1, curve["length"] + 1)
        bpc = np.asarray(curve["mean_nats"]) * scale
        band = 2 * np.asarray(curve["std_nats"]) / np.sqrt(curve["count"]) * scale
        dense = lengths <= SHORT
        ax.plot(lengths[dense], bpc[dense], color=color, lw=1.5, marker="o", ms=3, label=name)
        ax.fill_between(
            lengths[dense], (bpc - band)[dense], (bpc + band)[dense], color=color, alpha=0.2, lw=0
        )
        if curve["length"] > SHORT:
            ax.plot(lengths[SHORT - 1 :], bpc[SHORT - 1 :], color=color, lw=0.7, alpha=0.3)
            bins = plot_bins(curve["length"])
            means = [span(curve, first, last, scale) for first, last in bins]
            centres = [math.sqrt(first * last) for first, last in bins]
            ax.errorbar(
                [SHORT, *centres],
                [bpc[SHORT - 1], *(m for m, _ in means)],
                yerr=[band[SHORT - 1], *(e for _, e in means)],
                color=color,
                lw=1.5,
                marker="o",
                ms=3,
                capsize=2,
            )
        if curve["length"] < longest:  # it reads no more than its context
            ax.plot([curve["length"], longest], [bpc[-1]] * 2, color=color, lw=1, ls="--")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("tokens of context the prediction reads")
    ax.set_ylabel(f"bits per character ({result['split']} split)")
    ax.set_title("loss against context length (dashed: reads no more)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
