"""Load every model folder of models/ with nothing but onnxruntime, numpy and tokenizers.

For each model: check the hashes of the tokenizer, graphs and weights against the card, run the
graphs on a prompt, and greedily continue it. Exits non-zero, saying why, if anything fails.
Used by the tests in a fresh virtual environment without torch: what a user who installs only
the service has.

    python scripts/check_models.py [MODELS_DIR]
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer


def check(folder: Path) -> str:
    card = json.loads((folder / "card.json").read_text())
    tokenizer_path = folder.parent / card["tokenizer"]["file"]
    sha = hashlib.sha256(tokenizer_path.read_bytes()).hexdigest()
    if sha != card["tokenizer"]["sha256"]:
        raise SystemExit(f"{folder.name}: tokenizer hash {sha[:12]} is not the card's")
    for name, file in card["files"].items():  # the graphs and weights, as exported
        data = (folder / name).read_bytes()
        if (len(data), hashlib.sha256(data).hexdigest()) != (file["bytes"], file["sha256"]):
            raise SystemExit(f"{folder.name}: {name} is not the file its card records")
    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    ids = tokenizer.encode("Capitu olhou para mim").ids
    for _ in range(20):
        window = np.asarray(ids[-card["context"] :], dtype=np.int64)[None]
        logits = session.run(
            ["logits"], {"input_ids": window, "positions": np.asarray([[window.shape[1] - 1]])}
        )[0]
        if logits.shape != (1, 1, tokenizer.get_vocab_size()) or not np.isfinite(logits).all():
            raise SystemExit(f"{folder.name}: bad logits {logits.shape}")
        ids.append(int(logits[0, 0].argmax()))
    if card["has_attention"]:
        attention = ort.InferenceSession(
            str(folder / "attention.onnx"), providers=["CPUExecutionProvider"]
        )
        window = np.asarray(ids[-card["context"] :], dtype=np.int64)[None]
        weights = attention.run(
            ["attentions"], {"input_ids": window, "positions": np.asarray([[window.shape[1] - 1]])}
        )[0]
        if not np.allclose(weights.sum(-1), 1.0, atol=1e-4):
            raise SystemExit(f"{folder.name}: attention rows do not sum to 1")
    if "decoder.onnx" in card["graphs"]:  # the cached generation repeats the greedy tokens
        decoder = ort.InferenceSession(
            str(folder / "decoder.onnx"), providers=["CPUExecutionProvider"]
        )
        inputs = {i.name: i for i in decoder.get_inputs()}
        layers, _, heads, _, head_dim = inputs["past_keys"].shape
        keys = values = np.zeros((layers, 1, heads, 0, head_dim), dtype=np.float32)
        prompt = len(tokenizer.encode("Capitu olhou para mim").ids)
        feed = ids[:prompt]
        for expected in ids[prompt : card["context"]]:  # the cache holds one context
            cached, total = keys.shape[3], keys.shape[3] + len(feed)
            logits, keys, values = decoder.run(
                None,
                {
                    "input_ids": np.asarray([feed]),
                    "positions": np.arange(cached, total)[None],
                    "past_keys": keys,
                    "past_values": values,
                    "attention_mask": np.ones((1, total), dtype=np.int64),
                },
            )
            if int(logits[0].argmax()) != expected:
                raise SystemExit(f"{folder.name}: the cached decoder strays from the full windows")
            feed = [expected]
    return tokenizer.decode(ids)


def main() -> None:
    if {"-h", "--help"} & set(sys.argv[1:]):
        print(__doc__)
        return
    models = Path(sys.argv[1] if len(sys.argv) > 1 else "models")
    folders = sorted(p.parent for p in models.glob("*/card.json"))
    if not folders:
        raise SystemExit(f"{models} holds no model folder")
    for folder in folders:
        print(f"{folder.name}: {check(folder)!r}")
    print(f"torch importable: {_has_torch()}")


def _has_torch() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    main()
