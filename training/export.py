"""ONNX export: a checkpoint becomes a model folder that the service loads without torch.

A model folder holds:

- ``model.onnx``: ``input_ids`` (int64, [batch, sequence]) and ``positions`` (int64,
  [batch, positions]) -> ``logits`` (float32, [batch, positions, vocab]). Only the asked positions
  go through the output layer: generation asks for the last one, scoring for all of them.
- ``attention.onnx`` (attention models): the same inputs -> ``logits`` and ``attentions``
  (float32, [batch, layer, head, sequence, sequence]). A separate graph, because ONNX Runtime
  computes every output of a graph whether asked for or not: generation must not pay for weights.
- ``decoder.onnx`` (attention models): generation with a key/value cache. ``input_ids``
  (int64, [batch, sequence]) at ``positions`` (int64, [batch, sequence]), ``past_keys`` and
  ``past_values`` (float32, [layer, batch, head, past, head_dim]), ``attention_mask`` (int64,
  [batch, past+sequence], 0 for padding) -> ``logits`` of the last new token (float32,
  [batch, vocab]), ``present_keys`` and ``present_values`` ([layer, batch, head, past+sequence,
  head_dim]). Reading the prompt once, then one token a call, costs one position's work per
  token instead of a whole window's; the mask and positions let sequences of different lengths
  (concurrent requests) share a call.
- ``weights.bin``: the weights of every graph, stored once (ONNX external data).
- ``card.json``: what the model is, how it was trained and how well it does.

Weights are stored as float16 by default and cast to float32 inside the graph, where ONNX
Runtime folds the cast at load: half the disk, full-precision arithmetic.

The graphs come from ``torch.export`` (``torch.onnx.export(..., dynamo=True)``, opset 20), its
symbolic lengths named as above. Opset 20 has GELU as one operator, which ONNX Runtime fuses with
the bias before it (``BiasGelu``); at opset 18 GELU is spelled out as Div, Erf, Add, Mul, Mul in an
order its fusion does not recognise (``python -m bench export``). Graphs exported before by the
TorchScript exporter (opset 17, the models shipped so far) load and serve the same way.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from training.attention_lm import AttentionLM
from training.bengio import BengioLM
from training.checkpoint import load_checkpoint, parameter_count, read_config
from training.tokenizer import file_sha256

OPSET = 20
WEIGHTS_FILE = "weights.bin"
TOKENIZER_FILE = "tokenizer.json"
# Initializers smaller than this stay inside the graph (and in float32).
EXTERNAL_MIN_BYTES = 1024
PARAMETER_PREFIX = "model."  # ExportGraph and DecoderGraph hold the model as .model


class ExportGraph(nn.Module):
    """The exported computation: logits at chosen positions, and optionally attention weights."""

    def __init__(self, model: AttentionLM | BengioLM, with_attention: bool) -> None:
        super().__init__()
        self.model = model
        self.with_attention = with_attention

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor):
        if not self.with_attention:
            return self.model.logits_at(input_ids, positions)
        states, weights = self.model.hidden_states(input_ids, return_weights=True)
        index = positions.unsqueeze(-1).expand(-1, -1, states.shape[-1])  # (B, K, D)
        logits = self.model.head(torch.gather(states, 1, index))  # (B, K, V)
        return logits, torch.stack(weights, dim=1)  # (B, L, H, T, T)


class DecoderGraph(nn.Module):
    """The cached generation step of an attention model (``AttentionLM.decode``)."""

    def __init__(self, model: AttentionLM) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids, positions, past_keys, past_values, attention_mask):
        return self.model.decode(input_ids, past_keys, past_values, positions, attention_mask)


def _export_decoder(model: AttentionLM, path: Path) -> None:
    # Example: 2 new tokens after 3 cached ones, so neither length is taken for a constant.
    config = model.config
    steps, past = (2, 3) if config.context >= 5 else (1, 1)
    keys = torch.zeros(config.n_layer, 1, config.n_head, past, config.d_model // config.n_head)
    example = (
        torch.zeros(1, steps, dtype=torch.long),
        torch.arange(steps)[None] + past,
        keys,
        keys.clone(),
        torch.ones(1, past + steps, dtype=torch.long),
    )
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence", max=config.context)
    total = torch.export.Dim("total", max=2 * config.context)
    past = torch.export.Dim("past", max=2 * config.context)
    cache = {1: batch, 3: past}
    _onnx_export(
        DecoderGraph(model).eval(),
        example,
        path,
        ["input_ids", "positions", "past_keys", "past_values", "attention_mask"],
        ["logits", "present_keys", "present_values"],
        ({0: batch, 1: sequence}, {0: batch, 1: sequence}, cache, cache, {0: batch, 1: total}),
    )


def _export_graph(model: AttentionLM | BengioLM, path: Path, with_attention: bool) -> None:
    steps = min(8, model.context_size)
    example = (torch.zeros(1, steps, dtype=torch.long), torch.arange(steps)[None])
    outputs = ["logits", "attentions"] if with_attention else ["logits"]
    limit = model.context_size if isinstance(model, AttentionLM) else None  # Bengio: any length
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence", max=limit)
    positions = torch.export.Dim("positions")
    _onnx_export(
        ExportGraph(model, with_attention).eval(),
        example,
        path,
        ["input_ids", "positions"],
        outputs,
        ({0: batch, 1: sequence}, {0: batch, 1: positions}),
    )


def _onnx_export(graph, example, path: Path, inputs, outputs, dynamic_shapes) -> None:
    """torch.export-based ONNX export, dynamic where ``dynamic_shapes`` says, names as given."""
    program = torch.onnx.export(
        graph,
        example,
        input_names=inputs,
        output_names=outputs,
        dynamic_shapes=dynamic_shapes,
        opset_version=OPSET,
        dynamo=True,
        optimize=False,  # keeps each weight under its parameter's name, untransposed
        external_data=False,
    )
    program.save(str(path))


def _store_half(graph_model: onnx.ModelProto) -> None:
    """Replace each float32 initializer by a float16 one plus a Cast back to float32.

    Every weight is rounded, small ones too, so the graph computes exactly what
    ``evaluate --storage float16`` measured.
    """
    graph = graph_model.graph
    kept, casts = [], []
    for init in graph.initializer:
        # Only the model's parameters (named model.*): the exporter's own constants (GELU's
        # 1/sqrt(2), a mask's float32 minimum) stay float32, as evaluate's rounding leaves them.
        if init.data_type != TensorProto.FLOAT or not init.name.startswith(PARAMETER_PREFIX):
            kept.append(init)
            continue
        values = numpy_helper.to_array(init)
        half = numpy_helper.from_array(values.astype(np.float16), init.name + "__fp16")
        kept.append(half)
        casts.append(
            helper.make_node(
                "Cast", [half.name], [init.name], to=TensorProto.FLOAT, name=f"upcast_{init.name}"
            )
        )
    del graph.initializer[:]
    graph.initializer.extend(kept)
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(casts + nodes)


def _digest(tensor: onnx.TensorProto) -> str:
    return hashlib.sha256(
        tensor.raw_data + str((tensor.data_type, list(tensor.dims))).encode()
    ).hexdigest()


def _share_weights(folder: Path, graph_model: onnx.ModelProto) -> int:
    """Point every initializer already stored in weights.bin at that copy; returns how many."""
    stored = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    blob = (folder / WEIGHTS_FILE).read_bytes()
    index: dict[str, tuple[int, int]] = {}
    for init in stored.graph.initializer:
        if init.data_location != TensorProto.EXTERNAL:
            continue
        info = {entry.key: entry.value for entry in init.external_data}
        offset, length = int(info.get("offset", 0)), int(info["length"])
        copy = onnx.TensorProto()
        copy.CopyFrom(init)
        copy.raw_data = blob[offset : offset + length]
        index[_digest(copy)] = (offset, length)
    shared = 0
    for init in graph_model.graph.initializer:
        if not init.HasField("raw_data") or len(init.raw_data) < EXTERNAL_MIN_BYTES:
            continue
        found = index.get(_digest(init))
        if found is None:
            continue
        onnx.external_data_helper.set_external_data(init, WEIGHTS_FILE, *found)
        init.ClearField("raw_data")
        init.data_location = TensorProto.EXTERNAL
        shared += 1
    return shared


def _io(graph_model: onnx.ModelProto) -> dict[str, list[dict[str, Any]]]:
    def describe(values) -> list[dict[str, Any]]:
        out = []
        for value in values:
            tensor = value.type.tensor_type
            out.append(
                {
                    "name": value.name,
                    "dtype": TensorProto.DataType.Name(tensor.elem_type).lower(),
                    "shape": [d.dim_param or d.dim_value for d in tensor.shape.dim],
                }
            )
        return out

    return {
        "inputs": describe(graph_model.graph.input),
        "outputs": describe(graph_model.graph.output),
    }


def runtime_ops(graph: Path, threads: int = 1) -> list[str]:
    """The operators of the nodes ONNX Runtime runs for ``graph`` on the CPU, once it has
    optimized it (fusions such as ``BiasGelu`` included): what a graph really costs to run."""
    import onnxruntime as ort  # imported here: exporting needs no runtime

    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
        nodes = onnx.load(options.optimized_model_filepath, load_external_data=False).graph.node
    return [node.op_type for node in nodes]


def file_checksums(folder: Path) -> dict[str, dict[str, Any]]:
    """Size and sha256 of every file of a model folder that a runtime reads (its graphs and
    their weights), for the card: the service checks them before it loads anything, so a
    damaged or half-copied file is refused instead of served."""
    read = [p.name for p in folder.iterdir() if p.suffix == ".onnx" or p.name == WEIGHTS_FILE]
    return {
        name: {"bytes": (folder / name).stat().st_size, "sha256": file_sha256(folder / name)}
        for name in sorted(read)
    }


def record_checksums(folder: Path) -> dict[str, dict[str, Any]]:
    """The card of ``folder`` rewritten with the checksums of the files there now (export records
    them itself; this is for a folder exported before cards had them). Only for files known to
    be good: whatever is there becomes what the service accepts."""
    card_path = folder / "card.json"
    card = json.loads(card_path.read_text())
    card["files"] = file_checksums(folder)
    card_path.write_text(json.dumps(card, indent=2, ensure_ascii=False) + "\n")
    return card["files"]


def export_checkpoint(
    checkpoint: Path,
    out: Path,
    tokenizer: Path,
    name: str | None = None,
    storage: str = "float16",
    evaluations: list[Path] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write model.onnx (+ attention.onnx), weights.bin and card.json into ``out``."""
    if storage not in ("float16", "float32"):
        raise ValueError(f"storage {storage!r} is not float16 or float32")
    info = read_config(checkpoint)
    model = load_checkpoint(checkpoint, "cpu")
    if isinstance(model, AttentionLM):
        model.set_attention("matrix")  # plain MatMul/Softmax: every ONNX runtime runs it
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("model.onnx", "attention.onnx", "decoder.onnx", WEIGHTS_FILE):
        (out / stale).unlink(missing_ok=True)

    # The tokenizer lives once, beside the model folders, and the card names it by hash.
    shared_tokenizer = out.parent / TOKENIZER_FILE
    sha = file_sha256(tokenizer)
    if info.get("tokenizer_sha256") not in (None, sha):
        raise ValueError(f"{tokenizer} is not the tokenizer {checkpoint} was trained with")
    if shared_tokenizer.is_file() and file_sha256(shared_tokenizer) != sha:
        raise ValueError(
            f"{shared_tokenizer} differs from {tokenizer}: models in one folder "
            "must share one tokenizer"
        )
    if not shared_tokenizer.is_file():
        shutil.copyfile(tokenizer, shared_tokenizer)

    graphs = ["model"]
    if isinstance(model, AttentionLM):
        graphs += ["attention", "decoder"]
    described = {}
    for graph_name in graphs:
        raw = out / f"{graph_name}.raw.onnx"
        if graph_name == "decoder":
            _export_decoder(model, raw)
        else:
            _export_graph(model, raw, with_attention=graph_name == "attention")
        graph_model = onnx.load(str(raw))
        raw.unlink()
        # The exporter's record of every intermediate shape: stale once a runtime folds a weight's
        # Transpose (the service's int8 pass does), and nothing reads it.
        del graph_model.graph.value_info[:]
        if storage == "float16":
            _store_half(graph_model)
        path = out / f"{graph_name}.onnx"
        if graph_name == "model":
            onnx.save_model(
                graph_model,
                str(path),
                save_as_external_data=True,
                all_tensors_to_one_file=True,
                location=WEIGHTS_FILE,
                size_threshold=EXTERNAL_MIN_BYTES,
            )
        else:
            _share_weights(out, graph_model)
            onnx.save_model(graph_model, str(path))
        onnx.checker.check_model(str(path))
        described[f"{graph_name}.onnx"] = _io(graph_model)

    card: dict[str, Any] = {
        "name": name or out.name,
        "kind": info["kind"],
        "config": info["config"],
        "parameters": parameter_count(model),
        "context": model.context_size,
        "has_attention": isinstance(model, AttentionLM),
        "tokenizer": {"file": TOKENIZER_FILE, "sha256": sha},
        "storage": storage,
        "opset": OPSET,
        "graphs": described,
        "files": file_checksums(out),
        "training": {
            "data": info.get("data"),
            "hardware": info.get("hardware"),
            "training_seconds": info.get("training_seconds"),
            "tokens_seen": info.get("tokens_seen"),
            "step": info.get("step"),
            "train_config": info.get("train_config"),
            "command": info.get("command"),
            "git_commit": info.get("git_commit"),
        },
        "metrics": {},
        **(extra or {}),
    }
    for path in evaluations or []:
        result = json.loads(Path(path).read_text())
        key = (
            result["split"]
            if result.get("storage", "float32") == "float32"
            else (f"{result['split']}_{result['storage']}")
        )
        card["metrics"][key] = {
            k: result[k]
            for k in (
                "perplexity",
                "bits_per_character",
                "loss",
                "tokens",
                "characters",
                "window",
                "stride",
                "device",
                "storage",
            )
            if k in result
        }
    (out / "card.json").write_text(json.dumps(card, indent=2, ensure_ascii=False) + "\n")
    return card
