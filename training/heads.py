"""``python -m training heads``: what each attention head looks at, over a split.

For every shipped model with attention (its ``attention.onnx`` on the CPU), windows of the model's
context are laid evenly over a split's token stream. Each head's weights are read at the
queries of a window's second half, each of which has at least half a window to look back on:

- ``distance``: how many tokens back the weight lands on average (the sum of ``a[q, k] (q - k)``);
- ``entropy_bits``: the entropy of the weights, in bits (0: all on one token);
- ``self``, ``previous``, ``first``: the weight on the query's own token, on the one before it,
  and on the window's first token (a head that parks its weight there, an "attention sink").

``uniform`` gives the distance and entropy of weights spread evenly over everything a query may
see: a head near it averages its context like a bag of words. The attention maps of one example
sentence go in the result too, for the report's figures.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from runtime.hardware import cpu_label
from runtime.loader import LoadedModel, open_model
from training.context import check_tokenizer, weights_sha256

EXAMPLE = "Não tive filhos, não transmiti a nenhuma criatura o legado da nossa miséria."


def head_stats(attentions: np.ndarray) -> dict[str, np.ndarray]:
    """attentions (B, L, H, T, T), rows summing to 1 over the keys -> each statistic summed over
    the batch, (L, H), at the queries of the window's second half (T // 2 to T - 1)."""
    length = attentions.shape[-1]
    if length < 2:
        raise ValueError("a window needs at least 2 tokens")
    a = attentions[..., length // 2 :, :].astype(np.float64)  # (B, L, H, Q, T)
    queries = np.arange(length // 2, length)
    back = queries[:, None] - np.arange(length)[None, :]  # (Q, T); negative: a future key
    logs = np.log2(np.where(a > 0, a, 1.0))
    rows = np.arange(len(queries))
    stats = {
        "distance": (a * back).sum(-1),
        "entropy_bits": -(a * logs).sum(-1),
        "self": a[..., rows, queries],
        "previous": a[..., rows, queries - 1],
        "first": a[..., 0],
    }
    return {name: value.mean(-1).sum(0) for name, value in stats.items()}


def uniform(length: int) -> dict[str, float]:
    """Distance and entropy of weights spread evenly over the q + 1 tokens each query may see."""
    queries = np.arange(length // 2, length)
    return {
        "distance": float((queries / 2).mean()),
        "entropy_bits": float(np.log2(queries + 1).mean()),
    }


def measure_model(
    model: LoadedModel, tokens: np.ndarray, windows: int = 64, batch: int = 8
) -> dict[str, Any]:
    """Every head's statistics over ``windows`` windows of the model's context, laid evenly."""
    length = model.context
    if len(tokens) < length:
        raise ValueError(f"the split has {len(tokens)} tokens, fewer than a window of {length}")
    starts = np.linspace(0, len(tokens) - length, windows).astype(np.int64)
    totals: dict[str, np.ndarray] = {}
    for first in range(0, len(starts), batch):
        ids = np.stack([tokens[s : s + length] for s in starts[first : first + batch]])
        for name, value in head_stats(model.attention_weights(ids)).items():
            totals[name] = totals.get(name, 0) + value
    layers, heads = totals["distance"].shape
    return {
        "context": length,
        "layers": int(layers),
        "heads": int(heads),
        "windows": len(starts),
        **{name: np.round(value / len(starts), 4).tolist() for name, value in totals.items()},
        "uniform": uniform(length),
    }


def example_maps(model: LoadedModel, text: str = EXAMPLE) -> dict[str, Any]:
    """The attention maps (layer, head, query, key) of ``text``'s last context's worth of
    tokens, after an end-of-text token as the service reads a prompt."""
    eot = model.tokenizer.token_to_id("<|endoftext|>")
    ids = [eot, *model.tokenizer.encode(text).ids][-model.context :]
    maps = model.attention_weights(np.asarray([ids], dtype=np.int64))[0]
    return {
        "tokens": [model.tokenizer.decode([i], skip_special_tokens=False) for i in ids],
        "maps": np.round(maps.astype(np.float64), 3).tolist(),
    }


def measure(
    models_dir: Path,
    data_dir: Path,
    split: str = "test",
    windows: int = 64,
    threads: int = 2,
) -> dict[str, Any]:
    """Every attention model's heads over one split (models without attention are left out)."""
    from training import data

    meta = data.load_meta(data_dir)
    tokens = data.load_split(data_dir, split)
    models = [open_model(p.parent, threads) for p in sorted(models_dir.glob("*/card.json"))]
    models = [m for m in models if m.card.get("has_attention")]
    if not models:
        raise FileNotFoundError(f"{models_dir} holds no model with attention")
    started = time.perf_counter()
    result: dict[str, Any] = {
        "split": split,
        "windows": windows,
        "example": EXAMPLE,
        "cpu": f"{cpu_label()}, {threads} ONNX Runtime threads",
        "models": {},
    }
    for model in models:
        check_tokenizer(model, meta, data_dir)
        result["models"][model.folder.name] = {
            **measure_model(model, tokens, windows),
            "weights_sha256": weights_sha256(model.folder),
            "example": example_maps(model),
        }
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


def format_table(result: dict[str, Any], name: str) -> str:
    """One model's heads as a Markdown table: a row per layer, a column per head, each cell the
    mean distance back, the entropy, and the weight on the previous token."""
    model = result["models"][name]
    heads = range(model["heads"])
    lines = [
        "| layer | " + " | ".join(f"head {h}" for h in heads) + " |",
        "|---|" + "---|" * model["heads"],
    ]
    for layer in range(model["layers"]):
        cells = [
            f"{model['distance'][layer][h]:.1f} · {model['entropy_bits'][layer][h]:.1f} b · "
            f"{model['previous'][layer][h]:.0%}"
            for h in heads
        ]
        lines.append(f"| {layer} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(result: dict[str, Any], name: str, path: Path) -> None:
    """The example sentence's attention maps of one model: a grid, a row per layer and a column
    per head, each query's weights along its row; tokens on the outer axes."""
    from training.plot import plt

    example = result["models"][name]["example"]
    maps = np.asarray(example["maps"])
    layers, heads, length = maps.shape[0], maps.shape[1], maps.shape[-1]
    labels = [t.replace("\n", "⏎") or "·" for t in example["tokens"]]
    labels = ["<eot>" if t == "<|endoftext|>" else t for t in labels]
    side = 2.3 if heads > 1 else 4.5
    fig, axes = plt.subplots(
        layers, heads, figsize=(side * heads + 1, side * layers + 0.6), dpi=80, squeeze=False
    )
    for layer in range(layers):
        for head in range(heads):
            ax = axes[layer][head]
            ax.imshow(maps[layer, head], cmap="viridis", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if layer == layers - 1:
                ax.set_xticks(range(length), labels, rotation=90, fontsize=6)
            if head == 0:
                ax.set_yticks(range(length), labels, fontsize=6)
                ax.set_ylabel(f"layer {layer}", fontsize=8)
            if layer == 0:
                ax.set_title(f"head {head}", fontsize=8)
    fig.suptitle(f"{name}: attention weights (row: query, column: key)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
