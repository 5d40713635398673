"""int8 weights for CPU inference, made when a graph is loaded (``MACHADO_QUANTIZE=int8``).

The shipped graphs store their weights in float16 and cast them to float32 on load. ONNX
Runtime's dynamic quantization turns the weight of every matrix product with a constant weight
into int8 (per output channel) and quantizes the activations on the fly, so the products run on
the CPU's integer units. For this it needs the weights as plain float32 constants, so the graph
is rewritten first: the casts folded into float32 constants, then ONNX Runtime's basic
optimisations (constant folding) applied, which turns the ``Transpose`` of each weight into a
constant that the quantizer can see. Everything happens in a temporary directory; the models
directory is only read.

What it costs and gains, per model, is measured by ``scripts/bench_quantize.py``
(BENCHMARKS.md).
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnxruntime as ort

if TYPE_CHECKING:
    import onnx

log = logging.getLogger("service.quantize")


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


def quantize_int8(path: Path) -> bytes:
    """The serialized int8 version of the graph at ``path`` (weights read beside it)."""
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
            quantize_dynamic(folded, quantized, weight_type=QuantType.QInt8, per_channel=True)
        finally:
            logging.disable(previous)
        blob = quantized.read_bytes()
    log.debug(f"{path} quantized to int8 in {time.perf_counter() - started:.1f} s")
    return blob
