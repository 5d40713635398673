"""The attention model's decode graph for cache slots, built from its weights at load.

The exported `decoder.onnx` takes every layer's past keys and values as one array and returns
them with the new tokens' appended: each step copies the whole cache in (the batcher pads and
stacks the caches of the generations of a batch) and out again. This graph is what
onnxruntime-genai's model builder writes for CPUs instead: per layer, ONNX Runtime's
GroupQueryAttention (here with as many key/value heads as query heads: plain multi-head
attention) on a cache buffer of the whole context that is both its past and its present input,
so a step writes the new token's keys and values in place and copies no cache; the residual
adds and LayerNorms fused (SkipLayerNormalization), GELU with its bias (BiasGelu, the exact
erf GELU that the model uses). Same weights, same arithmetic up to float32 rounding
(tests/runtime/test_slots.py compares it with `decoder.onnx`).

Inputs: input_ids and positions (B, S), right-padded; last (B, N), the indices of the tokens
whose next-token logits each row returns (its last real token; speculative decoding's check
asks for all of them); seqlens_k (B,), each row's tokens after this call minus one;
total_sequence_length, the longest; past_key_L / past_value_L (B, H, context, head_dim) for
each layer L, bound (with ONNX Runtime's I/O binding) to the same buffers as present_key_L /
present_value_L.
Output: logits (B, N, V) of those tokens.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

OPSETS = (("", 20), ("com.microsoft", 1))
IR_VERSION = 10  # what this onnxruntime reads (onnx writes newer by default)


def graph_weights(graph: Path) -> dict[str, np.ndarray]:
    """The parameters of an exported model graph by their PyTorch names, as float32 (the
    shipped graphs store them as float16 and upcast them at load)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(graph))
    weights = {}
    for tensor in model.graph.initializer:
        name = tensor.name.removesuffix("__fp16")
        if name.startswith("model."):
            weights[name] = numpy_helper.to_array(tensor).astype(np.float32)
    return weights


def tied_embedding(weights: dict[str, np.ndarray]) -> np.ndarray:
    """The token embedding, which is also the output head: exports name it after either."""
    for name in ("model.token_embedding.weight", "model.head.weight"):
        if name in weights:
            return weights[name]
    raise KeyError("no token embedding (model.token_embedding.weight or model.head.weight)")


def build_decode_graph(graph: Path, config: dict, cache: str = "float32") -> bytes:
    """The serialized slot decode graph of the model whose exported graph is ``graph`` (its
    card's ``config``). ``cache="float16"``: the keys, values and attention in float16 (what
    CUDA's GroupQueryAttention takes), everything else float32."""
    from onnx import TensorProto, helper, numpy_helper

    w = graph_weights(graph)
    embedding = tied_embedding(w)
    layers, heads = int(config["n_layer"]), int(config["n_head"])
    width, context = int(config["d_model"]), int(config["context"])
    head_dim = width // heads
    nodes, initializers = [], []

    def weight(name: str, array: np.ndarray) -> str:
        initializers.append(numpy_helper.from_array(np.ascontiguousarray(array, np.float32), name))
        return name

    def op(kind: str, inputs: list[str], outputs: list[str], ms: bool = False, **attrs) -> str:
        domain = "com.microsoft" if ms else None
        nodes.append(helper.make_node(kind, inputs, outputs, domain=domain, **attrs))
        return outputs[0]

    tokens = op("Gather", [weight("embedding", embedding), "input_ids"], ["tok"])
    places = op(
        "Gather",
        [weight("positions_table", w["model.position_embedding.weight"]), "positions"],
        ["pos"],
    )
    residual = op("Add", [tokens, places], ["x"])
    first = "model.blocks.0.ln_attention."
    normed = op(
        "LayerNormalization",
        [residual, weight("ln_in.g", w[first + "weight"]), weight("ln_in.b", w[first + "bias"])],
        ["ln_in"],
        axis=-1,
        epsilon=1e-5,
    )
    f32, i64, i32 = TensorProto.FLOAT, TensorProto.INT64, TensorProto.INT32
    half = cache == "float16"
    kv_type = TensorProto.FLOAT16 if half else f32
    inputs = [
        helper.make_tensor_value_info("input_ids", i64, ["batch", "sequence"]),
        helper.make_tensor_value_info("positions", i64, ["batch", "sequence"]),
        helper.make_tensor_value_info("last", i64, ["batch", "outputs"]),
        helper.make_tensor_value_info("seqlens_k", i32, ["batch"]),
        helper.make_tensor_value_info("total_sequence_length", i32, []),
    ]
    vocab = embedding.shape[0]
    outputs = [helper.make_tensor_value_info("logits", f32, ["batch", "outputs", vocab])]
    for layer in range(layers):
        p = f"model.blocks.{layer}."
        qkv_w = np.concatenate([w[f"{p}attention.w{x}.weight"] for x in "qkv"]).T
        qkv_b = np.concatenate([w[f"{p}attention.w{x}.bias"] for x in "qkv"])
        projected = op("MatMul", [normed, weight(f"{layer}.qkv.w", qkv_w)], [f"{layer}.qkv.m"])
        qkv = op("Add", [projected, weight(f"{layer}.qkv.b", qkv_b)], [f"{layer}.qkv"])
        buffers = []
        for kind in ("key", "value"):
            shape = ["batch", heads, context, head_dim]
            inputs.append(helper.make_tensor_value_info(f"past_{kind}_{layer}", kv_type, shape))
            outputs.append(helper.make_tensor_value_info(f"present_{kind}_{layer}", kv_type, shape))
            buffers.append(f"past_{kind}_{layer}")
        if half:
            qkv = op("Cast", [qkv], [f"{layer}.qkv16"], to=kv_type)
        attended = op(
            "GroupQueryAttention",
            # The queries, keys and values packed in one input, as GroupQueryAttention reads
            # them: no Split node.
            [qkv, "", "", *buffers, "seqlens_k", "total_sequence_length"],
            [f"{layer}.att", f"present_key_{layer}", f"present_value_{layer}"],
            ms=True,
            num_heads=heads,
            kv_num_heads=heads,
        )
        if half:
            attended = op("Cast", [attended], [f"{layer}.att32"], to=f32)
        out = op(
            "MatMul",
            [attended, weight(f"{layer}.wo", w[f"{p}attention.wo.weight"].T)],
            [f"{layer}.o"],
        )
        normed = op(
            "SkipLayerNormalization",
            [
                out,
                residual,
                weight(f"{layer}.ln_ffn.g", w[f"{p}ln_ffn.weight"]),
                weight(f"{layer}.ln_ffn.b", w[f"{p}ln_ffn.bias"]),
                weight(f"{layer}.wo.b", w[f"{p}attention.wo.bias"]),
            ],
            [f"{layer}.ln_ffn", f"{layer}.mean1", f"{layer}.inv1", f"{layer}.res1"],
            ms=True,
            epsilon=1e-5,
        )
        residual = f"{layer}.res1"  # its fourth output: the sum before the norm
        up = op(
            "MatMul", [normed, weight(f"{layer}.up", w[f"{p}ffn.up.weight"].T)], [f"{layer}.up.m"]
        )
        gelu = op(
            "BiasGelu",
            [up, weight(f"{layer}.up.b", w[f"{p}ffn.up.bias"])],
            [f"{layer}.gelu"],
            ms=True,
        )
        down = op(
            "MatMul",
            [gelu, weight(f"{layer}.down", w[f"{p}ffn.down.weight"].T)],
            [f"{layer}.down.m"],
        )
        after = (
            f"model.blocks.{layer + 1}.ln_attention." if layer + 1 < layers else "model.ln_final."
        )
        normed = op(
            "SkipLayerNormalization",
            [
                down,
                residual,
                weight(f"{layer}.ln_next.g", w[after + "weight"]),
                weight(f"{layer}.ln_next.b", w[after + "bias"]),
                weight(f"{layer}.down.b", w[f"{p}ffn.down.bias"]),
            ],
            [f"{layer}.ln_next", f"{layer}.mean2", f"{layer}.inv2", f"{layer}.res2"],
            ms=True,
            epsilon=1e-5,
        )
        residual = f"{layer}.res2"
    initializers.append(numpy_helper.from_array(np.asarray([-1], np.int64), "minus_one"))
    picked = op("Unsqueeze", ["last", "minus_one"], ["picked"])  # (B, N, 1)
    last = op("GatherND", [normed, picked], ["hidden_last"], batch_dims=1)  # (B, N, D)
    op("MatMul", [last, weight("head", embedding.T)], ["logits"])
    graph_proto = helper.make_graph(nodes, "slot_decoder", inputs, outputs, initializers)
    model = helper.make_model(
        graph_proto,
        ir_version=IR_VERSION,
        opset_imports=[helper.make_opsetid(domain, version) for domain, version in OPSETS],
    )
    return model.SerializeToString()
