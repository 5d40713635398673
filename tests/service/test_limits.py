"""What one request may cost and what the service shows and reads: a bad model folder fails
alone, every endpoint that works takes a slot, answers are bounded, answers carry the security
headers and reflect nothing, and nothing outside the models directory is read."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from tests.service.conftest import MODELS, every_slot_taken, make_settings


def copy_models(tmp_path: Path, names=("attention-seed", "bengio")) -> Path:
    """A models directory of copies of the shipped ``names`` (small ones), with the tokenizer."""
    root = tmp_path / "models"
    root.mkdir()
    shutil.copy(MODELS / "tokenizer.json", root)
    for name in names:
        shutil.copytree(MODELS / name, root / name)
    return root


def edit_card(folder: Path, change) -> None:
    card = json.loads((folder / "card.json").read_text())
    change(card)
    (folder / "card.json").write_text(json.dumps(card))


@pytest.mark.parametrize(
    "change, reason",
    [
        (lambda card: card.pop("context"), "'context' must be a positive integer"),
        (lambda card: card.update(context="eight"), "'context' must be a positive integer"),
        (lambda card: card.update(context=0), "'context' must be positive"),
        (lambda card: card["config"].pop("vocab_size"), "'config.vocab_size'"),
        (lambda card: card.update(tokenizer={"file": "tokenizer.json"}), "sha256"),
        (lambda card: card.update(config=[1, 2]), "'config' must be an object"),
    ],
)
def test_limits_a_bad_card_fails_its_model_alone(tmp_path, change, reason):
    """A card that is valid JSON but lacks (or mistypes) a field the service reads: that model
    is failed with the reason in /ready and /models; the others serve."""
    root = copy_models(tmp_path)
    edit_card(root / "bengio", change)
    with TestClient(create_app(make_settings(models_dir=root))) as client:
        ready = client.get("/ready")
        assert ready.status_code == 503
        states = ready.json()["models"]
        assert states["attention-seed"] == "ready"
        assert states["bengio"].startswith("failed") and reason in states["bengio"], states
        models = {m["name"]: m for m in client.get("/models").json()["models"]}
        assert models["bengio"]["status"] == "failed" and reason in models["bengio"]["error"]
        answer = client.post("/next-token", json={"model": "attention-seed", "prompt": "Capitu"})
        assert answer.status_code == 200
        failed = client.post("/next-token", json={"model": "bengio", "prompt": "Capitu"})
        assert failed.status_code == 503 and reason in failed.json()["error"]["message"]


def test_limits_a_model_that_fails_its_probe_fails_alone(tmp_path, monkeypatch):
    """A model whose graph loads but cannot run is failed at start with the reason, instead of
    failing on every request."""
    import service.app

    real = service.app.probe

    def failing(engine):
        if engine.name == "bengio":
            raise RuntimeError("the graph fails on its first call")
        real(engine)

    monkeypatch.setattr(service.app, "probe", failing)
    root = copy_models(tmp_path)
    with TestClient(create_app(make_settings(models_dir=root))) as client:
        states = client.get("/ready").json()["models"]
    assert states["attention-seed"] == "ready"
    assert "RuntimeError: the graph fails on its first call" in states["bengio"], states


def test_limits_ready_keeps_the_reason_behind_the_key(tmp_path):
    """With an API key, the open /ready says a model failed, not why (paths, runtime
    internals); /models, behind the key, says why."""
    root = copy_models(tmp_path)
    (root / "bengio" / "weights.bin").write_bytes(b"not weights")
    settings = make_settings(models_dir=root, api_key="secret")
    with TestClient(create_app(settings)) as client:
        states = client.get("/ready").json()["models"]
        assert states["bengio"] == "failed (the reason is in /models, which needs the API key)"
        keyed = client.get("/models", headers={"Authorization": "Bearer secret"}).json()
        error = {m["name"]: m for m in keyed["models"]}["bengio"]["error"]
        assert "weights.bin" in error


def test_limits_model_folder_linked_from_outside_is_refused(tmp_path):
    """A model folder that is a symbolic link to a folder outside the models directory is
    not loaded: the service reads nothing from outside it."""
    root = copy_models(tmp_path, names=("attention-seed",))
    outside = tmp_path / "elsewhere" / "bengio"
    shutil.copytree(MODELS / "bengio", outside)
    (root / "bengio").symlink_to(outside, target_is_directory=True)
    with TestClient(create_app(make_settings(models_dir=root))) as client:
        states = client.get("/ready").json()["models"]
    assert "resolves outside the models directory" in states["bengio"], states
    assert states["attention-seed"] == "ready"


def test_limits_weights_file_linked_from_outside_is_refused(tmp_path):
    root = copy_models(tmp_path, names=("bengio",))
    outside = tmp_path / "weights.bin"
    shutil.move(root / "bengio" / "weights.bin", outside)
    (root / "bengio" / "weights.bin").symlink_to(outside)
    with TestClient(create_app(make_settings(models_dir=root))) as client:
        states = client.get("/ready").json()["models"]
    assert "weights.bin resolves outside the models directory" in states["bengio"], states


def test_limits_external_data_outside_the_folder_is_refused_by_the_service(tmp_path):
    """A graph whose weights point outside the models directory is refused by the service's
    own check, before ONNX Runtime opens it."""
    import onnx

    root = copy_models(tmp_path, names=("bengio",))
    graph = root / "bengio" / "model.onnx"
    proto = onnx.load(str(graph), load_external_data=False)
    for tensor in proto.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../../weights.bin"
    onnx.save(proto, str(graph))
    edit_card(root / "bengio", lambda card: card.pop("files"))  # no checksum to stop it first
    with TestClient(create_app(make_settings(models_dir=root))) as client:
        states = client.get("/ready").json()["models"]
    assert "external data '../../weights.bin' resolves outside" in states["bengio"], states


@pytest.mark.parametrize(
    "path, body",
    [
        ("/tokenize", {"text": "Capitu"}),
        ("/detokenize", {"ids": [1, 2, 3]}),
    ],
)
def test_limits_tokenizer_endpoints_take_a_slot(client, path, body):
    """/tokenize and /detokenize do work like the others: with every slot taken, a 429."""
    with every_slot_taken(client):
        answer = client.post(path, json=body)
    assert answer.status_code == 429, answer.text
    assert answer.json()["error"]["type"] == "overloaded"


def test_limits_tokenize_answer_over_the_limit_is_422():
    """A text whose tokens would make an answer over MACHADO_MAX_ANSWER_ITEMS: 422, saying
    how many and the limit."""
    settings = make_settings(max_answer_items=1000, max_score_chars=5000)
    with TestClient(create_app(settings)) as client:
        answer = client.post("/tokenize", json={"text": "😀" * 1200})
        assert answer.status_code == 422, answer.text
        error = answer.json()["error"]
        assert error["type"] == "answer_too_large" and error["field"] == "text"
        assert "most 1,000" in error["message"]
        assert client.post("/tokenize", json={"text": "Capitu " * 100}).status_code == 200


def test_limits_completions_answer_over_the_limit_is_422_before_any_work():
    """Echo, logprobs, n and several prompts multiply: the product is checked before any
    model work."""
    settings = make_settings(max_answer_items=10_000, max_new_tokens=64)
    with TestClient(create_app(settings)) as client:
        body = {
            "model": "bengio",
            "prompt": [[17] * 500] * 4,
            "max_tokens": 64,
            "n": 4,
            "logprobs": 5,
            "echo": True,
        }
        answer = client.post("/v1/completions", json=body)
        assert answer.status_code == 422, answer.text
        error = answer.json()["error"]
        assert error["type"] == "answer_too_large"
        assert "4 choice(s) x (2000 echoed prompt tokens + 4 prompt(s) x 64" in error["message"]
        metrics = client.get("/metrics").text
        assert 'machado_generated_tokens_total{model="bengio"}' not in metrics
        small = {**body, "prompt": "Capitu", "n": 1}
        assert client.post("/v1/completions", json=small).status_code == 200


def test_limits_score_per_token_over_the_limit_is_422():
    settings = make_settings(max_answer_items=1000)
    with TestClient(create_app(settings)) as client:
        text = {"model": "bengio", "text": "a" * 1500}
        assert client.post("/score", json={**text, "per_token": True}).status_code == 422
        assert client.post("/score", json=text).status_code == 200


@pytest.mark.parametrize(
    "path",
    ["/", "/static/index.html", "/static/app.js", "/docs", "/health", "/nothing", "/metrics"],
)
def test_limits_every_answer_is_nosniff_and_every_page_has_a_policy(client, path):
    answer = client.get(path)
    assert answer.headers["x-content-type-options"] == "nosniff", path
    assert answer.headers["referrer-policy"] == "no-referrer", path
    if answer.headers.get("content-type", "").startswith("text/html"):
        assert "frame-ancestors 'none'" in answer.headers["content-security-policy"], path


@pytest.mark.parametrize("path", ["/docs/", "/models/", "/static", "/v1/models/"])
def test_limits_no_redirect_is_built_from_the_host_header(client, path):
    answer = client.get(path, headers={"host": "evil.example"}, follow_redirects=False)
    assert answer.status_code == 404, (path, answer.status_code)
    assert "location" not in answer.headers
    assert "evil" not in answer.text


def test_limits_404_does_not_quote_the_path(client):
    answer = client.get("/<script>alert(1)</script>")
    assert answer.status_code == 404
    assert "script" not in answer.text and "alert" not in answer.text


def test_limits_refused_cors_preflight_is_json():
    settings = make_settings(cors_origins="http://allowed.example")
    with TestClient(create_app(settings)) as client:
        refused = client.options(
            "/generate",
            headers={"origin": "http://other.example", "access-control-request-method": "POST"},
        )
        assert refused.status_code == 400
        assert refused.headers["content-type"] == "application/json"
        assert refused.json()["error"]["type"] == "cors_refused"
        allowed = client.options(
            "/generate",
            headers={"origin": "http://allowed.example", "access-control-request-method": "POST"},
        )
        assert allowed.status_code == 200


def test_limits_compare_labels_do_not_grow_with_model_orders(client):
    """However many orders of models /compare is asked for, its requests share one label."""
    orders = [["attention-seed", "bengio"], ["bengio", "attention-seed"]]
    for models in orders:
        body = {"models": models, "prompt": "Capitu", "max_new_tokens": 2}
        assert client.post("/compare", json=body).status_code == 200
    lines = [
        line
        for line in client.get("/metrics").text.splitlines()
        if line.startswith("machado_requests_total") and 'route="/compare"' in line
    ]
    assert len(lines) == 1 and 'model="(several)"' in lines[0], lines


def test_limits_head_with_too_many_headers_is_431(client):
    headers = {f"x-h{i}": "1" for i in range(120)}
    answer = client.get("/health", headers=headers)
    assert answer.status_code == 431
    assert answer.json()["error"]["type"] == "request_head_too_large"
