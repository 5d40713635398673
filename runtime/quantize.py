"""int8 weights for CPU inference, made when a graph is loaded (``MACHADO_QUANTIZE=int8``).

The shipped graphs store their weights in float16 and cast them to float32 on load. ONNX
Runtime's dynamic quantization turns the weight of every matrix product with a constant weight
into int8 (per output channel) and quantizes the activations on the fly, so the products run on
the CPU's integer units. For this it needs the weights as plain float32 constants, so the graph
is rewritten first: the casts folded into float32 constants, then ONNX Runtime's basic
optimisations (constant folding) applied, which turns the ``Transpose`` of each weight into a
constant that the quantizer can see. Everything happens in a temporary directory; the models
directory is only read.

On an x86 CPU without VNNI the weights get 7 bits instead of 8 (the quantizer's
``reduce_range``): there ONNX Runtime multiplies uint8 activations by int8 weights with an
instruction (vpmaddubsw) that adds each pair of products in 16 bits and saturates, since
255 x 127 x 2 is more than 32,767; with 7-bit weights every pair fits. VNNI adds in 32 bits, and
ARM CPUs widen first, so they keep 8 bits. On an AVX2 EPYC 8-bit weights moved a small trained
model's logits by up to 21 % of the largest (tests/training/test_export.py); on the shipped models
the two cost about the same (BENCHMARKS.md).

What it costs and gains, per model, is measured by ``python -m bench quantize``
(BENCHMARKS.md).
"""

from __future__ import annotations

import logging
import platform
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnxruntime as ort

from runtime.hardware import cpu_info

if TYPE_CHECKING:
    import onnx

log = logging.getLogger("runtime.quantize")

VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})  # /proc/cpuinfo's names
X86 = frozenset({"x86_64", "amd64", "i386", "i686", "x86"})


def int8_weight_bits(machine: str | None = None, flags: set[str] | None = None) -> int:
    """Bits of the int8 weights on this CPU: 7 on x86 without VNNI (or where its flags cannot
    be read), else 8 (see the module docstring)."""
    if (machine or platform.machine()).lower() not in X86:
        return 8
    return 8 if (cpu_info()[1] if flags is None else flags) & VNNI_FLAGS else 7


def float32_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """The graph with every ``Cast`` of a stored initializer replaced by a float32 constant."""
    from onnx import numpy_helper

    graph = model.graph
    stored = {init.name: init for init in graph.initializer}
    kept, folded = [], []
    for node in graph.node:
        if node.op_type == "Cast" and node.input[0] in stored:
            array = numpy_helper.to_array(stored[node.input[0]]).astype(np.float32)
            folded.append(numpy_helper.from_array(array, node.output[0]))
        else:
            kept.append(node)
    used = {name for node in kept for name in node.input}
    remaining = [init for name, init in stored.items() if name in used]
    del graph.node[:]
    graph.node.extend(kept)
    del graph.initializer[:]
    graph.initializer.extend(remaining + folded)
    return model


def quantize_int8(path: Path, weight_bits: int | None = None) -> bytes:
    """The serialized int8 version of the graph at ``path`` (weights read beside it), its weights
    in ``weight_bits`` bits (7 or 8; default: int8_weight_bits() of this CPU)."""
    bits = int8_weight_bits() if weight_bits is None else weight_bits
    if bits not in (7, 8):
        raise ValueError(f"weight_bits is {bits}, expected 7 or 8")
    import onnx  # imported here: a service that does not quantize runs without it
    from onnxruntime.quantization import QuantType, quantize_dynamic

    started = time.perf_counter()
    model = float32_constants(onnx.load(str(path)))
    with tempfile.TemporaryDirectory(prefix="machado-int8-") as tmp:
        folded, quantized = Path(tmp) / "folded.onnx", Path(tmp) / "int8.onnx"
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = str(folded)
        options.log_severity_level = 3
        ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        del model
        previous = logging.root.manager.disable
        logging.disable(logging.WARNING)  # the quantizer logs every tensor to the root logger
        try:
            quantize_dynamic(
                folded,
                quantized,
                weight_type=QuantType.QInt8,
                per_channel=True,
                reduce_range=bits == 7,
            )
        finally:
            logging.disable(previous)
        blob = quantized.read_bytes()
    log.debug(f"{path} quantized to {bits}-bit int8 in {time.perf_counter() - started:.1f} s")
    return blob


def block_int8(graph: bytes) -> bytes:
    """``graph`` (serialized, weights inside) with each constant-weight MatMul as ONNX Runtime's
    MatMulNBits: 8-bit weights in blocks of 32 with a scale each, products in int8 (accuracy
    level 4). Unlike quantize_int8's dynamic scheme, which scales a call's activations as a
    whole, it quantizes each row's activations on their own, so a row's logits do not depend on
    the batch: the cache slots batch int8 generations (runtime.slots)."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    config = DefaultWeightOnlyQuantConfig(
        block_size=32, is_symmetric=True, accuracy_level=4, bits=8
    )
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)  # the quantizer logs every node to the root logger
    try:
        quantizer = MatMulNBitsQuantizer(onnx.load_from_string(graph), algo_config=config)
        quantizer.process()
    finally:
        logging.disable(previous)
    return quantizer.model.model.SerializeToString()
