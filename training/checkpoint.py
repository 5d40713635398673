"""Model configs, presets and checkpoints: weights in safetensors, config beside them in JSON.

A checkpoint folder holds ``model.safetensors`` and ``config.json`` (kind, config, training
metadata), so it rebuilds its own model with nothing else; ``train_state.pt`` (optimizer, step,
random state) is there too where training can resume from it.

A checkpoint is written whole into ``FOLDER.tmp`` and only then put in place of the old one, so a
process killed while saving leaves the previous checkpoint or the new one, never half of each
(``recover`` finishes a swap that was cut between its two renames).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from training.attention_lm import ATTENTION_PRESETS, AttentionConfig, AttentionLM
from training.bengio import BENGIO_PRESETS, BengioConfig, BengioLM

KINDS = ("attention", "bengio")
Config = AttentionConfig | BengioConfig


def preset(kind: str, name: str, **overrides: Any) -> Config:
    """A named preset of a model kind, with fields overridden."""
    presets = {"attention": ATTENTION_PRESETS, "bengio": BENGIO_PRESETS}.get(kind)
    if presets is None:
        raise ValueError(f"model kind {kind!r} is not one of {KINDS}")
    if name not in presets:
        raise ValueError(f"{kind} preset {name!r} is not one of {sorted(presets)}")
    fields = [f.name for f in dataclasses.fields(presets[name])]
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise ValueError(
            f"the {kind} model has no field {', '.join(unknown)}; its fields: {', '.join(fields)}"
        )
    return dataclasses.replace(presets[name], **overrides)


def config_from_dict(kind: str, fields: dict[str, Any]) -> Config:
    cls = {"attention": AttentionConfig, "bengio": BengioConfig}.get(kind)
    if cls is None:
        raise ValueError(f"model kind {kind!r} is not one of {KINDS}")
    return cls(**fields)


def build_model(config: Config) -> AttentionLM | BengioLM:
    return AttentionLM(config) if isinstance(config, AttentionConfig) else BengioLM(config)


def parameter_count(model: nn.Module) -> int:
    """Distinct parameters (a tied weight counts once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def save_checkpoint(
    folder: Path,
    model: AttentionLM | BengioLM,
    metadata: dict[str, Any] | None = None,
    train_state: dict[str, Any] | None = None,
) -> None:
    """Write weights, config and (optionally) the training state in place of the folder."""
    folder = Path(folder)
    recover(folder)
    tmp, old = _beside(folder, "tmp"), _beside(folder, "old")
    shutil.rmtree(tmp, ignore_errors=True)  # a save cut short before
    tmp.mkdir(parents=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if isinstance(model, AttentionLM):
        state.pop("head.weight")  # tied to token_embedding.weight
    save_file(state, str(tmp / "model.safetensors"))
    config = {
        "kind": model.config.kind,
        "config": dataclasses.asdict(model.config),
        "parameters": parameter_count(model),
        **(metadata or {}),
    }
    (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    if train_state is not None:
        torch.save(train_state, tmp / "train_state.pt")
    if folder.exists():
        shutil.rmtree(old, ignore_errors=True)
        folder.rename(old)
    tmp.rename(folder)  # complete: from here on the new checkpoint is the one
    shutil.rmtree(old, ignore_errors=True)


def _beside(folder: Path, suffix: str) -> Path:
    return folder.with_name(f"{folder.name}.{suffix}")


def recover(folder: Path) -> None:
    """Finish a save that was killed between its renames: the complete new copy takes its place.

    FOLDER.tmp is only renamed into place once written whole, and FOLDER is only moved away after
    that; so where FOLDER is missing and FOLDER.tmp is there, FOLDER.tmp is complete.
    """
    folder = Path(folder)
    tmp = _beside(folder, "tmp")
    if not folder.exists() and tmp.is_dir():
        tmp.rename(folder)


def read_config(folder: Path) -> dict[str, Any]:
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not a checkpoint: it has no config.json")
    return json.loads(path.read_text())


def load_checkpoint(
    folder: str | Path, device: str | torch.device = "cpu"
) -> AttentionLM | BengioLM:
    """The model a checkpoint folder describes, with its weights, in eval mode."""
    folder = Path(folder)
    info = read_config(folder)
    model = build_model(config_from_dict(info["kind"], info["config"]))
    state = load_file(str(folder / "model.safetensors"))
    if isinstance(model, AttentionLM):
        state["head.weight"] = state["token_embedding.weight"]
    model.load_state_dict({k: v.float() for k, v in state.items()})
    return model.to(device).eval()


def torch_model_from_folder(folder) -> torch.nn.Module:
    """The PyTorch model of an exported model folder, its weights read back from the ONNX graph
    (float16-stored weights come back as the float32 the graph computes with)."""
    import json
    from pathlib import Path

    import onnx
    from onnx import numpy_helper

    from training.attention_lm import AttentionConfig, AttentionLM
    from training.bengio import BengioConfig, BengioLM

    folder = Path(folder)
    card = json.loads((folder / "card.json").read_text())
    if card["kind"] == "attention":
        model = AttentionLM(AttentionConfig(**card["config"]))
    else:
        model = BengioLM(BengioConfig(**card["config"]))
    graph = onnx.load(str(folder / "model.onnx")).graph
    state = {}
    for init in graph.initializer:
        name = init.name.removesuffix("__fp16").removeprefix("model.")
        state[name] = torch.from_numpy(numpy_helper.to_array(init).astype("float32"))
    if card["kind"] == "attention":  # the head is tied to the embedding: either name holds it
        tied = state.get("token_embedding.weight", state.get("head.weight"))
        if tied is not None:
            state["token_embedding.weight"] = state["head.weight"] = tied
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or missing:
        raise ValueError(f"{folder}: weights missing {missing}, unexpected {unexpected}")
    return model.eval()
