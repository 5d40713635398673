"""Attention maps of a prompt, and the queries and keys they come from (``Engine.attention``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from runtime.errors import HeadNotFound, LayerNotFound, NoAttention, VectorsNotServed
from runtime.results import AttentionMaps

if TYPE_CHECKING:
    from runtime.engine import Engine


def attention_maps(
    engine: Engine,
    prompt: str,
    max_tokens: int,
    layer: int | None,
    head: int | None,
    vectors: bool = False,
) -> AttentionMaps:
    """The weights of the prompt's last ``max_tokens`` tokens (at most the context), for
    one layer and head or all; with ``vectors``, also the queries and keys they come from
    (VectorsNotServed where the graph does not expose them)."""
    if not engine.model.has_attention:
        raise NoAttention(
            f"model {engine.name} ({engine.card['kind']}) has no attention layers; "
            "ask a model whose has_attention is true in GET /models",
            "model",
        )
    config = engine.card["config"]
    layers, heads = int(config["n_layer"]), int(config["n_head"])
    if layer is not None and layer >= layers:
        raise LayerNotFound(
            f"layer {layer} does not exist: {engine.name} has layers 0..{layers - 1}",
            "layer",
        )
    if head is not None and head >= heads:
        raise HeadNotFound(
            f"head {head} does not exist: {engine.name} has heads 0..{heads - 1}",
            "head",
        )
    if vectors and not engine.model.attention_vectors:
        raise VectorsNotServed(
            f"model {engine.name} serves attention weights but not their queries and keys "
            "(its attention graph does not expose them); ask without vectors",
            "vectors",
        )
    ids = engine.prompt_ids(prompt)
    keep = min(max_tokens, engine.context)
    window = np.asarray(ids[-keep:], dtype=np.int64)[None]
    weights, queries, keys = engine.model.attention_parts(window, vectors)
    layer_ids = [layer] if layer is not None else list(range(layers))
    head_ids = [head] if head is not None else list(range(heads))
    selected = weights[0][np.ix_(layer_ids, head_ids)].astype(np.float64)  # (l, h, T, T)
    vecs = [None, None]  # each listed layer's queries and keys, when asked
    if vectors:
        vecs = [[v[i][0].astype(float).tolist() for i in layer_ids] for v in (queries, keys)]
    return AttentionMaps(
        tokens=engine.token_texts(window[0].tolist()),
        token_ids=window[0].tolist(),
        truncated=len(ids) > keep,
        layers=layer_ids,
        heads=head_ids,
        attention=(selected if vectors else np.round(selected, 5)).tolist(),
        queries=vecs[0],
        keys=vecs[1],
        head_dim=int(config["d_model"]) // heads if vectors else None,
    )
