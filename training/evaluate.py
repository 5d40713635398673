"""Perplexity and bits per character of a model over a whole split.

Every token of the split after the first is predicted exactly once. Windows of the model's block
size overlap by half: the first window scores all its tokens, each later one only its second half,
so every scored token (but those of the first window) sees at least half a window before it. A
model that reads only its last n tokens (Bengio's) needs less: its windows overlap by n - 1 tokens,
so every scored token still has all n, and the split takes about half as many windows. The
service's /score lays its windows the same way.

BPC = total negative log-likelihood in bits / characters (code points) of the cleaned split;
per-token perplexity = exp(mean NLL in nats). Both count the end-of-text tokens between documents.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from runtime.windows import stride_of, window_plan
from training import data
from training.checkpoint import load_checkpoint, read_config
from training.device import keep_freed_memory


@torch.no_grad()
def stream_nll(
    model: torch.nn.Module,
    tokens: np.ndarray,
    length: int,
    batch_size: int = 32,
    max_windows: int | None = None,
    device: str | torch.device = "cpu",
) -> tuple[float, int]:
    """Total NLL in nats of a token stream and the number of tokens it scored.

    The windows are laid out for what the model reads (its ``context_size``; see window_plan).
    """
    plan = window_plan(len(tokens), length, model.context_size)
    if max_windows is not None:
        plan = plan[:max_windows]
    stream = torch.as_tensor(tokens, dtype=torch.long, device=device)
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    window = min(length, len(tokens) - 1)
    offsets = torch.arange(window, device=device)  # (L,)
    for i in range(0, len(plan), batch_size):
        chunk = plan[i : i + batch_size]
        starts = torch.tensor([s for s, _ in chunk], device=device)[:, None]  # (B, 1)
        first = torch.tensor([f for _, f in chunk], device=device)[:, None]  # (B, 1)
        x = stream[starts + offsets]  # (B, L)
        y = stream[starts + offsets + 1].masked_fill(offsets < first, -1)  # (B, L)
        logits, _ = model(x)
        total += F.cross_entropy(
            logits.flatten(0, 1).float(), y.flatten(), ignore_index=-1, reduction="sum"
        ).double()
        count += int((y != -1).sum())
    model.train(was_training)
    return float(total), count


def metrics(nll_nats: float, tokens: int, characters: int) -> dict[str, float]:
    return {
        "nll_nats": nll_nats,
        "tokens": tokens,
        "characters": characters,
        "loss": nll_nats / tokens,
        "perplexity": math.exp(nll_nats / tokens),
        "bits_per_character": nll_nats / math.log(2) / characters,
    }


def evaluate_checkpoint(
    checkpoint: Path,
    data_dir: Path,
    split: str = "test",
    batch_size: int = 32,
    device: str | None = None,
    storage: str = "float32",
) -> dict:
    """Perplexity and BPC of a checkpoint over a whole split, with where and how it was measured.

    ``storage="float16"`` rounds every weight to fp16 first (computing in fp32 still): what
    shipping the weights at half size costs.
    """
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    keep_freed_memory(torch.device(device))  # on a CPU: half the time for a tiny model
    meta = data.load_meta(data_dir)
    info = read_config(checkpoint)
    if info.get("tokenizer_sha256") not in (None, meta["tokenizer_sha256"]):
        raise ValueError(
            f"{checkpoint} was trained with tokenizer {info['tokenizer_sha256'][:12]}, "
            f"but {data_dir} holds tokenizer {meta['tokenizer_sha256'][:12]}"
        )
    model = load_checkpoint(checkpoint, device)
    if storage not in ("float32", "float16"):
        raise ValueError(f"storage {storage!r} is not float32 or float16")
    if storage == "float16":
        with torch.no_grad():
            for param in model.parameters():
                param.copy_(param.half().float())
    tokens = data.load_split(data_dir, split)
    started = time.perf_counter()
    nll, count = stream_nll(model, tokens, model.block_size, batch_size, device=device)
    result = {
        "checkpoint": str(checkpoint),
        "kind": info["kind"],
        "split": split,
        "window": model.block_size,
        "stride": stride_of(min(model.block_size, len(tokens) - 1), model.context_size),
        "device": str(device),
        "storage": storage,
        "seconds": round(time.perf_counter() - started, 3),
        **metrics(nll, count, meta["splits"][split]["characters"]),
    }
    return result


def write_json(result: dict, path: Path | None) -> None:
    text = json.dumps(result, indent=2) + "\n"
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
