"""Training and validation loss curves as a PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt


def plot_curves(
    history: list[dict[str, Any]], path: Path, title: str, runs: dict[str, list] | None = None
) -> None:
    """Loss against tokens seen: train (every log point) and validation (every evaluation).

    ``runs`` plots several runs on one figure ({label: history}); otherwise ``history`` alone.
    """
    runs = runs or {title: history}
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for i, (label, records) in enumerate(runs.items()):
        color = f"C{i}"
        train = [(r["tokens"], r["train_loss"]) for r in records if "train_loss" in r]
        val = [(r["tokens"], r["val_loss"]) for r in records if "val_loss" in r]
        if train:
            ax.plot(
                *zip(*train, strict=True), color=color, alpha=0.45, lw=1, label=f"{label} train"
            )
        if val:
            ax.plot(
                *zip(*val, strict=True),
                color=color,
                marker="o",
                ms=3,
                lw=1.5,
                label=f"{label} validation",
            )
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("cross-entropy (nats per token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
