"""The attention model as GGUF for llama.cpp (bench/gguf_export.py): every tensor where
llama.cpp's gpt2 architecture looks for it, f16 equal to the served weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bench.gguf_export import gguf_tensors, vocabulary, write_gguf
from runtime.decode_graph import graph_weights

MODELS = Path(__file__).resolve().parents[2] / "models"
gguf = pytest.importorskip("gguf", reason="gguf is a dev dependency (pip install -e .[dev])")


@pytest.fixture(scope="module")
def weights():
    return graph_weights(MODELS / "attention" / "model.onnx")


def test_tensors_are_gpt2s_with_qkv_concatenated(weights):
    tensors = gguf_tensors(weights, 6)
    assert tensors["token_embd.weight"].shape == (8192, 384)
    assert tensors["position_embd.weight"].shape == (256, 384)
    qkv = tensors["blk.2.attn_qkv.weight"]
    assert qkv.shape == (3 * 384, 384)
    assert np.array_equal(qkv[384:768], weights["model.blocks.2.attention.wk.weight"])
    assert tensors["blk.5.ffn_up.weight"].shape == (1536, 384)
    assert tensors["blk.5.ffn_down.weight"].shape == (384, 1536)
    assert len(tensors) == 4 + 6 * 12


def test_a_graph_of_another_layout_is_refused(weights):
    partial = {k: v for k, v in weights.items() if "ln_final" not in k}
    with pytest.raises(ValueError, match="output_norm"):
        gguf_tensors(partial, 6)


def test_vocabulary_is_the_tokenizers(tmp_path):
    tokens, types, merges, eot = vocabulary(MODELS / "tokenizer.json")
    spec = json.loads((MODELS / "tokenizer.json").read_text())
    assert len(tokens) == 8192 and tokens[eot] == "<|endoftext|>"
    assert types[eot] == gguf.TokenType.CONTROL and types[1] == gguf.TokenType.NORMAL
    assert len(merges) == len(spec["model"]["merges"]) and all(" " in m for m in merges)


@pytest.mark.parametrize("kind", ["f16", "q8_0"])
def test_gguf_file_reads_back(tmp_path, weights, kind):
    path = write_gguf(MODELS / "attention", tmp_path / f"a-{kind}.gguf", kind)
    reader = gguf.GGUFReader(str(path))
    fields = reader.fields
    arch = bytes(fields["general.architecture"].parts[-1]).decode()
    assert arch == "gpt2"
    assert int(fields["gpt2.context_length"].parts[-1][0]) == 256
    assert int(fields["gpt2.attention.head_count"].parts[-1][0]) == 6
    by_name = {t.name: t for t in reader.tensors}
    wanted = {"f16": gguf.GGMLQuantizationType.F16, "q8_0": gguf.GGMLQuantizationType.Q8_0}[kind]
    assert by_name["blk.0.attn_qkv.weight"].tensor_type == wanted
    assert by_name["blk.0.attn_qkv.bias"].tensor_type == gguf.GGMLQuantizationType.F32
    if kind == "f16":  # the served weights are stored as float16: f16 holds them exactly
        stored = np.asarray(by_name["blk.3.ffn_down.weight"].data, dtype=np.float32)
        assert np.array_equal(stored.reshape(384, 1536), weights["model.blocks.3.ffn.down.weight"])
