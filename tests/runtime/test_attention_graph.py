"""The queries and keys of the attention graphs, found in the exported graphs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from runtime.attention_graph import output_name, with_projections

MODELS = Path(__file__).resolve().parents[2] / "models"


def test_projections_become_outputs_and_change_no_weight():
    blob = with_projections(MODELS / "attention" / "attention.onnx", 6)
    assert blob is not None
    session = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    assert names[:2] == ["logits", "attentions"]
    assert names[2:] == [output_name(k, layer) for layer in range(6) for k in ("queries", "keys")]
    plain = ort.InferenceSession(
        str(MODELS / "attention" / "attention.onnx"), providers=["CPUExecutionProvider"]
    )
    feed = {"input_ids": np.array([[0, 51, 700, 33, 2048]]), "positions": np.array([[4]])}
    assert np.array_equal(session.run(["attentions"], feed)[0], plain.run(["attentions"], feed)[0])
    queries = session.run(["queries.0"], feed)[0]
    assert queries.shape == (1, 5, 384)


def test_a_graph_without_projections_serves_weights_only(caplog):
    """A graph whose layers are not found (here Bengio's, which has none) is left as it is."""
    assert with_projections(MODELS / "bengio" / "model.onnx", 1) is None
    assert "queries.0" in caplog.text
