"""Smoke training on the real corpus: a tiny model beats the unigram entropy of the train split."""

from __future__ import annotations

import numpy as np
import pytest

from training.data import load_split
from training.train import TrainConfig, train

pytestmark = pytest.mark.slow  # real weights on a real port, training runs, or a browser


def unigram_entropy_nats(tokens: np.ndarray) -> float:
    counts = np.bincount(tokens)
    p = counts[counts > 0] / len(tokens)
    return float(-(p * np.log(p)).sum())


def test_real_corpus_splits_as_manifest(real_data):
    import json

    meta = json.loads((real_data / "meta.json").read_text())
    assert meta["splits"]["validation"]["documents"] == 2
    assert meta["splits"]["test"]["documents"] == 2
    assert meta["splits"]["train"]["documents"] == 110
    assert meta["vocab_size"] == 8192


@pytest.mark.parametrize("kind", ["attention", "bengio"])
def test_smoke_training_beats_unigram_entropy(kind, real_data, tmp_path):
    """A few hundred steps of the tiny preset end below the train split's unigram entropy."""
    entropy = unigram_entropy_nats(load_split(real_data, "train"))
    summary = train(
        TrainConfig(
            kind=kind,
            preset="tiny",
            out=tmp_path / kind,
            data=real_data,
            batch_size=16,
            lr=2e-3,
            warmup_steps=30,
            max_steps=300,
            eval_interval=150,
            eval_windows=100,  # 100 windows of the validation split: the smoke, not the figure
            device="cpu",
            progress=False,
        )
    )
    assert summary["best_val_loss"] < entropy, (summary["best_val_loss"], entropy)
