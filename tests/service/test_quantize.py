"""int8 weights at load (MACHADO_QUANTIZE=int8): what changes, what must not."""

from __future__ import annotations

import json
import logging

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from fastapi.testclient import TestClient

import runtime.loader
from runtime.engine import Engine
from runtime.loader import CPU, CUDA, ProviderChoice, load_model, load_models
from runtime.quantize import float32_constants, int8_weight_bits, quantize_int8
from service.app import create_app
from tests.service.conftest import MODELS, make_options, make_settings

pytestmark = pytest.mark.slow  # real weights on a real port, training runs, or a browser

SHIPPED = ("attention", "attention-seed", "bengio")
# Plain Portuguese prose written for this test (not the corpus), long enough for several windows.
TEXT = (
    "Naquela manhã de chuva, o velho professor abriu a janela da sala e ficou olhando a rua "
    "deserta. Lembrou-se dos anos em que ensinava latim aos filhos dos vizinhos, das tardes "
    "compridas, das cartas que nunca mandou. A vida, pensou ele, é um livro que se lê às "
    "avessas: só no fim percebemos o sentido das primeiras páginas. Sentou-se, tomou o café "
    "já frio e escreveu duas linhas a uma senhora que não via havia trinta anos. Depois rasgou "
    "o papel, riu de si mesmo e saiu para o trabalho, como todos os dias, sem guarda-chuva. "
) * 3


def _session(source) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.log_severity_level = 3
    return ort.InferenceSession(source, options, providers=[CPU])


@pytest.fixture(scope="module")
def int8_models():
    return load_models(make_options(quantize="int8", provider="cpu"))


@pytest.fixture(scope="module")
def float_models():
    return load_models(make_options(provider="cpu"))


def test_float32_constants_leave_the_graph_exact():
    """Folding the float16 casts into float32 constants changes no logit."""
    path = MODELS / "attention-seed" / "model.onnx"
    folded = float32_constants(onnx.load(str(path)))
    assert not [n for n in folded.graph.node if n.op_type == "Cast" and "__fp16" in n.input[0]]
    context = json.loads((MODELS / "attention-seed" / "card.json").read_text())["context"]
    ids = np.random.default_rng(0).integers(0, 8192, size=(2, context))
    feed = {"input_ids": ids, "positions": np.tile(np.arange(context), (2, 1))}
    expected = _session(str(path)).run(None, feed)[0]
    got = _session(folded.SerializeToString()).run(None, feed)[0]
    assert np.abs(got - expected).max() < 1e-5


@pytest.mark.parametrize(
    "graph", ["attention/model.onnx", "attention/decoder.onnx", "bengio/model.onnx"]
)
def test_every_weight_product_becomes_integer(graph):
    """Each matrix product by a weight runs on int8; products of two activations stay float."""
    original = [n.op_type for n in onnx.load(str(MODELS / graph)).graph.node]
    quantized = onnx.load_from_string(quantize_int8(MODELS / graph))
    ops = [n.op_type for n in quantized.graph.node]
    weight_products = ops.count("MatMulInteger") + ops.count("DynamicQuantizeMatMul")
    config = json.loads((MODELS / graph).with_name("card.json").read_text())["config"]
    by_activations = 2 * config.get("n_layer", 0)  # queries x keys, weights x values
    expected = original.count("MatMul") - by_activations
    assert weight_products == expected > 0, ops
    assert ops.count("MatMul") == by_activations
    int8 = onnx.TensorProto.INT8
    weights = [i for i in quantized.graph.initializer if i.data_type == int8 and len(i.dims) == 2]
    assert len(weights) == expected  # and the zero points beside them are int8 vectors


@pytest.mark.parametrize(
    ("machine", "flags", "bits"),
    [
        ("x86_64", {"avx2", "fma"}, 7),  # vpmaddubsw adds u8 x s8 pairs in 16 bits
        ("x86_64", {"avx2", "avx512f", "avx512_vnni"}, 8),
        ("x86_64", {"avx2", "avx_vnni"}, 8),
        ("AMD64", {"amx_int8"}, 8),
        ("x86_64", set(), 7),  # flags unknown: the safe choice
        ("aarch64", set(), 8),
    ],
)
def test_int8_weights_take_7_bits_on_x86_without_vnni(machine, flags, bits):
    assert int8_weight_bits(machine, flags) == bits


@pytest.mark.parametrize("bits", [7, 8])
def test_weight_bits_bound_every_int8_weight(bits):
    """7 bits: every weight within -64..64, so two products of a uint8 activation fit in int16."""
    quantized = onnx.load_from_string(quantize_int8(MODELS / "bengio" / "model.onnx", bits))
    weights = [
        onnx.numpy_helper.to_array(i)
        for i in quantized.graph.initializer
        if i.data_type == onnx.TensorProto.INT8 and len(i.dims) == 2
    ]
    largest = max(int(np.abs(w.astype(np.int32)).max()) for w in weights)
    assert largest == (64 if bits == 7 else 127), largest
    assert (2 * 255 * largest <= 32_767) == (bits == 7)


def test_weight_bits_other_than_7_or_8_are_refused():
    with pytest.raises(ValueError, match="expected 7 or 8"):
        quantize_int8(MODELS / "bengio" / "model.onnx", 6)


def test_registry_quantizes_the_generation_graphs_on_the_cpu(int8_models):
    for name in SHIPPED:
        model = int8_models[name]
        assert model.ready, model.error
        assert (model.provider, model.precision) == (CPU, "int8")
    assert int8_models["attention"].decoder_session is not None
    assert int8_models["attention"].attention_session is not None


@pytest.mark.parametrize("name", SHIPPED)
def test_int8_scores_text_almost_as_well_as_float(name, int8_models, float_models):
    """On prose the model never saw, int8 costs under 0.02 bits per character, and the most
    likely next token mostly stays the same."""
    quantized, exact = Engine(int8_models[name]), Engine(float_models[name])
    a, b = quantized.score(TEXT, per_token=False), exact.score(TEXT, per_token=False)
    assert a.tokens == b.tokens > quantized.score_window
    assert abs(a.bits_per_character - b.bits_per_character) < 0.02, (a, b)
    ids = quantized.prompt_ids(TEXT)
    same = sum(
        int(np.argmax(quantized.next_logits(ids[:end])) == np.argmax(exact.next_logits(ids[:end])))
        for end in range(10, len(ids), max(1, len(ids) // 40))
    )
    total = len(range(10, len(ids), max(1, len(ids) // 40)))
    assert same / total >= 0.85, (same, total)


def test_int8_real_corpus_cost_is_small(int8_models, float_models, real_corpus):
    """On a validation document, int8 costs under 0.01 bits per character on every model."""
    from training.corpus import read_split

    document = read_split(real_corpus, "validation")[0][:20_000]
    for name in SHIPPED:
        a = Engine(int8_models[name]).score(document, per_token=False).bits_per_character
        b = Engine(float_models[name]).score(document, per_token=False).bits_per_character
        assert abs(a - b) < 0.01, (name, a, b)


def test_api_says_which_precision_and_serves_int8():
    settings = make_settings(quantize="int8", provider="cpu")
    with TestClient(create_app(settings)) as client:
        models = {m["name"]: m for m in client.get("/models").json()["models"]}
        assert {name: models[name]["precision"] for name in SHIPPED} == dict.fromkeys(
            SHIPPED, "int8"
        )
        for name in SHIPPED:
            body = {"model": name, "prompt": "Era uma vez", "max_new_tokens": 12, "temperature": 0}
            response = client.post("/generate", json=body)
            assert response.status_code == 200, response.text
            assert response.json()["usage"]["completion_tokens"] == 12
        response = client.post("/attention", json={"model": "attention", "prompt": "Era uma vez"})
        weights = np.asarray(response.json()["attention"])
        assert np.allclose(weights.sum(-1), 1.0, atol=1e-4)
    # The attention maps stay float32: the same weights as a float32 server's.
    with TestClient(create_app(make_settings())) as client:
        response = client.post("/attention", json={"model": "attention", "prompt": "Era uma vez"})
        exact = np.asarray(response.json()["attention"])
    assert np.abs(weights - exact).max() < 1e-6


def test_default_is_float32(float_models):
    assert {float_models[name].precision for name in SHIPPED} == {"float32"}


def test_cuda_probe_that_falls_back_still_quantizes():
    """Asked for CUDA where it is unusable: the model lands on the CPU, then gets int8 (on a
    machine where CUDA works it stays float32: int8 applies to the CPU provider only)."""
    settings = make_settings(quantize="int8")
    options = settings.load_options()
    model = load_model(MODELS / "bengio", options, {}, ProviderChoice([CUDA, CPU], "test"))
    assert model.ready, model.error
    assert model.precision == ("int8" if model.provider == CPU else "float32")


def test_failed_quantization_serves_float32_with_a_warning(monkeypatch, caplog):
    def broken(path):
        raise RuntimeError("no room")

    monkeypatch.setattr(runtime.loader, "quantize_int8", broken)
    settings = make_settings(quantize="int8", provider="cpu")
    options = settings.load_options()
    with caplog.at_level(logging.WARNING, logger="runtime.loader"):
        model = load_model(MODELS / "bengio", options, {}, ProviderChoice([CPU], "test"))
    assert model.ready and model.precision == "float32"
    assert "int8 quantization of model.onnx failed, serving float32" in caplog.text
    assert "no room" in caplog.text
