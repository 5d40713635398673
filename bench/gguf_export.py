"""A shipped attention model as a GGUF file for llama.cpp, written from its ONNX weights.

The model is a GPT-2 shaped decoder (learned positions, pre-LayerNorm blocks with biases, GELU,
the output tied to the token embedding), so it is written as llama.cpp's ``gpt2`` architecture:
the separate WQ, WK and WV concatenate into ``attn_qkv``. The weights are read from the model's
ONNX initializers (float16 on disk, as the service loads them), so ``f16`` holds exactly the
served weights and ``q8_0`` is llama.cpp's 8-bit quantization of them. The tokenizer goes in as
GPT-2's byte-level BPE (its pre-tokenizer is GPT-2's), with ``<|endoftext|>`` as the
beginning-of-text token the service also puts before every prompt. One difference stays:
llama.cpp's GELU is the tanh approximation, the model's the exact one; the benchmark checks that
greedy completions agree anyway.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from runtime.decode_graph import graph_weights, tied_embedding

LAYER = re.compile(r"model\.blocks\.(\d+)\.(.+)$")
# The model's names (after model.blocks.N.) -> llama.cpp's (after blk.N.).
BLOCK_NAMES = {
    "ln_attention.weight": "attn_norm.weight",
    "ln_attention.bias": "attn_norm.bias",
    "attention.wo.weight": "attn_output.weight",
    "attention.wo.bias": "attn_output.bias",
    "ln_ffn.weight": "ffn_norm.weight",
    "ln_ffn.bias": "ffn_norm.bias",
    "ffn.up.weight": "ffn_up.weight",
    "ffn.up.bias": "ffn_up.bias",
    "ffn.down.weight": "ffn_down.weight",
    "ffn.down.bias": "ffn_down.bias",
}
GLOBAL_NAMES = {
    "model.position_embedding.weight": "position_embd.weight",
    "model.ln_final.weight": "output_norm.weight",
    "model.ln_final.bias": "output_norm.bias",
}
TYPES = ("f16", "q8_0")


def gguf_tensors(weights: dict[str, np.ndarray], layers: int) -> dict[str, np.ndarray]:
    """llama.cpp's tensors of the gpt2 architecture from the model's parameters."""
    out = {GLOBAL_NAMES[k]: v for k, v in weights.items() if k in GLOBAL_NAMES}
    out["token_embd.weight"] = tied_embedding(weights)  # also the output head
    for layer in range(layers):
        block = f"model.blocks.{layer}."
        for ours, theirs in BLOCK_NAMES.items():
            out[f"blk.{layer}.{theirs}"] = weights[block + ours]
        for part in ("weight", "bias"):
            qkv = [weights[f"{block}attention.w{x}.{part}"] for x in "qkv"]
            out[f"blk.{layer}.attn_qkv.{part}"] = np.concatenate(qkv, axis=0)
    missing = {*GLOBAL_NAMES.values(), "token_embd.weight"} - set(out)
    if missing:
        raise ValueError(f"the graph lacks {sorted(missing)}: not the attention model's layout")
    return out


def vocabulary(tokenizer_file: Path) -> tuple[list[str], list[int], list[str], int]:
    """(tokens by id, their GGUF token types, merges, the end-of-text id) of a byte-level BPE
    tokenizer.json."""
    from gguf import TokenType

    spec = json.loads(tokenizer_file.read_text(encoding="utf-8"))
    model = spec["model"]
    if model.get("type") != "BPE" or (spec.get("pre_tokenizer") or {}).get("type") != "ByteLevel":
        raise ValueError(f"{tokenizer_file} is not a byte-level BPE tokenizer")
    by_id = {i: t for t, i in model["vocab"].items()}
    special = {a["id"]: a["content"] for a in spec.get("added_tokens", [])}
    by_id.update(special)
    tokens = [by_id[i] for i in range(len(by_id))]
    types = [TokenType.CONTROL if i in special else TokenType.NORMAL for i in range(len(tokens))]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    eot = next(i for i, t in special.items() if t == "<|endoftext|>")
    return tokens, [int(t) for t in types], merges, eot


def write_gguf(folder: Path, out: Path, kind: str = "f16") -> Path:
    """The model of ``folder`` (a shipped attention model) as GGUF at ``out``: 2-D weights as
    ``kind`` (f16 or q8_0), norms and biases float32, as llama.cpp's converter writes them."""
    import gguf

    if kind not in TYPES:
        raise ValueError(f"kind {kind!r} is not one of {TYPES}")
    card = json.loads((folder / "card.json").read_text())
    config = card["config"]
    tensors = gguf_tensors(graph_weights(folder / "model.onnx"), int(config["n_layer"]))
    tokens, types, merges, eot = vocabulary(folder.parent / card["tokenizer"]["file"])
    writer = gguf.GGUFWriter(str(out), "gpt2")
    writer.add_name(f"machado-lm {folder.name}")
    writer.add_context_length(int(config["context"]))
    writer.add_embedding_length(int(config["d_model"]))
    writer.add_feed_forward_length(int(config["d_model"]) * int(config["ffn_mult"]))
    writer.add_block_count(int(config["n_layer"]))
    writer.add_head_count(int(config["n_head"]))
    writer.add_layer_norm_eps(1e-5)  # PyTorch's LayerNorm default, which the model uses
    qtype = {"f16": gguf.GGMLQuantizationType.F16, "q8_0": gguf.GGMLQuantizationType.Q8_0}[kind]
    file_type = {"f16": gguf.LlamaFileType.MOSTLY_F16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}
    writer.add_file_type(file_type[kind])
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(eot)
    writer.add_eos_token_id(eot)
    writer.add_add_bos_token(True)
    for name, array in tensors.items():
        if array.ndim == 1:
            writer.add_tensor(name, array.astype(np.float32))
        else:
            data = gguf.quants.quantize(array.astype(np.float32), qtype)
            writer.add_tensor(name, data, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out
