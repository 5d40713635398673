"""The attention graph with each layer's queries and keys among its outputs.

`/attention` can then return, beside the weights the graph computes with matrix products, the
query and key vectors they come from, so that a reader (the playground) recomputes the weights
with plain loops and sees both agree: the course notebook's lesson, on the served model. The
vectors are found in the exported graph, not exported separately, so the shipped graphs serve
them unchanged: each layer's projection is the MatMul fed by its ``attention.wq.weight`` (or
``wk``), through a Transpose, plus its bias where the Add follows.
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from pathlib import Path

log = logging.getLogger("machado.runtime")

PROJECTION_WEIGHT = re.compile(r"blocks\.(\d+)\.attention\.w([qk])\.weight$")
KIND = {"q": "queries", "k": "keys"}


def output_name(kind: str, layer: int) -> str:
    """The graph output of one layer's queries or keys, e.g. ``queries.0``."""
    return f"{kind}.{layer}"


def with_projections(path: Path, layers: int) -> bytes | None:
    """The serialized graph at ``path`` (its weights read in) with outputs ``queries.L`` and
    ``keys.L`` (batch, tokens, width) for each of ``layers``; None where any is not found."""
    import onnx  # a dependency of the service; imported here as quantize_int8 does

    model = onnx.load(str(path))
    graph = model.graph
    consumers = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node)
    tensors = [t.name for t in graph.initializer] + [o for n in graph.node for o in n.output]
    found: dict[tuple[str, int], str] = {}
    for tensor in tensors:
        match = PROJECTION_WEIGHT.search(tensor)
        if not match:
            continue
        layer, kind = int(match.group(1)), KIND[match.group(2)]
        users = consumers[tensor]
        if len(users) == 1 and users[0].op_type == "Transpose":
            users = consumers[users[0].output[0]]
        if len(users) != 1 or users[0].op_type != "MatMul":
            continue
        out = users[0].output[0]
        after = consumers[out]
        bias = tensor.removesuffix("weight") + "bias"
        if len(after) == 1 and after[0].op_type == "Add" and bias in after[0].input:
            out = after[0].output[0]
        found[(kind, layer)] = out
    wanted = [(kind, layer) for layer in range(layers) for kind in KIND.values()]
    missing = [output_name(*key) for key in wanted if key not in found]
    if missing:
        log.warning(f"{path}: no {', '.join(missing)} in the graph; /attention serves weights only")
        return None
    for kind, layer in wanted:
        name = output_name(kind, layer)
        graph.node.append(onnx.helper.make_node("Identity", [found[(kind, layer)]], [name]))
        graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return model.SerializeToString()
