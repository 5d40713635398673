"""Every error of the API, on the shipped models: what a bad request gets, and what the
service says about its own state (overloaded, timed out, not ready, a broken model)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from tests.service.conftest import error_of, every_slot_taken, make_settings


def test_api_unknown_model_404(client):
    error_of(
        client.post("/generate", json={"model": "gpt", "prompt": "a"}),
        404,
        "model_not_found",
        "model",
    )
    error_of(client.post("/tokenize", json={"text": "a", "model": "gpt"}), 404, "model_not_found")


@pytest.mark.parametrize("name", ["../models", "a/b", "..", "x y", ".hidden", "a" * 65])
def test_api_model_names_with_path_characters_422(client, name):
    error_of(
        client.post("/next-token", json={"model": name, "prompt": "a"}),
        422,
        "invalid_field",
        "model",
    )


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"prompt": ""}, "prompt"),
        ({"prompt": "   \n\t"}, "prompt"),
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": "NaN"}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"max_new_tokens": 10**9}, "max_new_tokens"),
        ({"top_k": 101}, "top_k"),
        ({"max_new_tokens": 33}, "max_new_tokens"),
        ({"repetition_penalty": 0.5}, "repetition_penalty"),
        ({"seed": -1}, "seed"),
        ({"stop": [""]}, "stop.0"),
        ({"logprobs": 21}, "logprobs"),
        ({"unknown": 1}, "unknown"),
        ({"prompt": 5}, "prompt"),
    ],
)
def test_api_generate_invalid_fields_422(client, change, field):
    body = {"model": "attention", "prompt": "Capitu", **change}
    error_of(client.post("/generate", json=body), 422, "invalid_field", field)


def test_api_nan_literal_temperature_422(client):
    raw = b'{"model": "attention", "prompt": "a", "temperature": NaN}'
    response = client.post("/generate", content=raw, headers={"content-type": "application/json"})
    error_of(response, 422, "invalid_field", "temperature")


def test_api_malformed_json_400(client):
    response = client.post(
        "/generate", content=b'{"model": ', headers={"content-type": "application/json"}
    )
    error_of(response, 400, "invalid_json")


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/generate", '{"model": "attention", "prompt": "a \\ud800 b"}', "prompt"),
        ("/score", '{"model": "bengio", "text": "\\udfff"}', "text"),
        ("/tokenize", '{"text": "Capitu \\udc80"}', "text"),
        ("/generate", '{"model": "attention", "prompt": "a", "stop": ["\\ud83d"]}', "stop.0"),
        ("/v1/completions", '{"model": "ab", "prompt": "a", "user": "\\ud800"}', "user"),
        ("/v1/completions", '{"model": "ab", "prompt": "\\ud800"}', "prompt"),
    ],
)
def test_api_lone_surrogate_escape_is_422_saying_so(client, path, body, field):
    """JSON may escape half a surrogate pair alone (\\ud800): no character; the error says that
    rather than pydantic's "unable to parse raw data"."""
    response = client.post(path, content=body, headers={"content-type": "application/json"})
    error = error_of(response, 422, "invalid_field", field)
    assert "lone surrogate" in error["message"], error


@pytest.mark.parametrize("raw", [b"", b"  \r\n\t"])
@pytest.mark.parametrize("path", ["/generate", "/tokenize", "/v1/completions"])
def test_api_empty_body_is_400_saying_so(client, path, raw):
    response = client.post(path, content=raw, headers={"content-type": "application/json"})
    error = error_of(response, 400, "invalid_json")
    assert "the body is empty" in error["message"], error


def test_api_invalid_utf8_400(client):
    raw = b'{"model": "attention", "prompt": "\xff\xfe"}'
    response = client.post("/generate", content=raw, headers={"content-type": "application/json"})
    error_of(response, 400, "invalid_utf8")


def test_api_lone_surrogate_422(client):
    raw = b'{"model": "attention", "prompt": "a\\ud800b"}'
    response = client.post("/generate", content=raw, headers={"content-type": "application/json"})
    error_of(response, 422, "invalid_field", "prompt")


def test_api_wrong_content_type_415(client):
    response = client.post(
        "/generate",
        content=b"model=attention",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    error_of(response, 415, "unsupported_media_type")


def test_api_body_over_limit_413(client):
    """Refused before it is read to its end: the connection closes, or the rest of the body
    would read as the next request."""
    response = client.post("/score", json={"model": "attention", "text": "a" * 70_000})
    error_of(response, 413, "payload_too_large")
    assert response.headers["connection"] == "close"


def test_api_prompt_over_configured_limit_422(client):
    long_prompt = {"model": "attention", "prompt": "a" * 2001}
    error_of(client.post("/generate", json=long_prompt), 422, "invalid_field", "prompt")
    long_text = {"model": "attention", "text": "a" * 5001}
    error_of(client.post("/score", json=long_text), 422, "invalid_field", "text")


def test_api_unknown_route_and_method(client):
    error = error_of(client.get("/nothing"), 404, "not_found")
    assert error["message"] == (
        "no endpoint for GET at this path; the API is listed at /docs (/openapi.json)"
    )
    error = error_of(client.get("/generate"), 405, "method_not_allowed")
    assert error["message"] == "GET is not allowed on /generate; allowed: POST"


def test_api_chat_completions_points_to_completions(client):
    """OpenAI clients try chat first: the answer says why there is none and what to use."""
    chat = {"model": "attention", "messages": [{"role": "user", "content": "Capitu"}]}
    error = error_of(client.post("/v1/chat/completions", json=chat), 404, "not_found")
    assert "without a chat format" in error["message"], error
    assert "POST /v1/completions" in error["message"], error
    assert (
        client.post(
            "/v1/completions", json={"model": "attention", "prompt": "Capitu", "max_tokens": 2}
        ).status_code
        == 200
    )


def test_api_overloaded_429_with_retry_after(client):
    """With every slot taken and no room to wait, an inference request is turned away at once."""
    with every_slot_taken(client):
        response = client.post("/next-token", json={"model": "attention", "prompt": "a"})
    error_of(response, 429, "overloaded")
    assert response.headers["retry-after"] == "1"
    assert client.post("/next-token", json={"model": "attention", "prompt": "a"}).status_code == 200


def test_api_timeout_504():
    with TestClient(create_app(make_settings(request_timeout_s=0.001))) as slow:
        response = slow.post(
            "/generate", json={"model": "attention", "prompt": "Capitu", "max_new_tokens": 32}
        )
    error_of(response, 504, "timeout")


def test_api_not_ready_without_models(tmp_path):
    with TestClient(create_app(make_settings(models_dir=tmp_path))) as empty:
        assert empty.get("/ready").status_code == 503
        error_of(empty.post("/tokenize", json={"text": "a"}), 503, "not_ready")
        assert empty.get("/health").status_code == 200


def test_api_broken_model_is_reported_not_fatal(tmp_path):
    """A model folder that cannot load shows in /ready and /models; the others serve."""
    import shutil

    from tests.service.conftest import MODELS

    shutil.copytree(MODELS / "attention-seed", tmp_path / "attention-seed")
    shutil.copy(MODELS / "tokenizer.json", tmp_path / "tokenizer.json")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "card.json").write_text("{not json")
    with TestClient(create_app(make_settings(models_dir=tmp_path))) as partial:
        ready = partial.get("/ready")
        assert ready.status_code == 503 and ready.json()["models"]["broken"].startswith("failed")
        models = {m["name"]: m for m in partial.get("/models").json()["models"]}
        assert models["broken"]["status"] == "failed" and models["broken"]["error"]
        error_of(
            partial.post("/next-token", json={"model": "broken", "prompt": "a"}),
            503,
            "not_ready",
            "model",
        )
        ok = partial.post("/next-token", json={"model": "attention-seed", "prompt": "a"})
        assert ok.status_code == 200


def test_api_openapi_shows_limits(client):
    """The schema carries this server's configured limits (the test client's: 32 new tokens)."""
    schema = client.get("/openapi.json").json()
    generate = schema["components"]["schemas"]["GenerateRequest"]["properties"]
    assert generate["max_new_tokens"]["maximum"] == 32
    assert generate["prompt"]["maxLength"] == 2000
    assert generate["top_p"]["exclusiveMinimum"] == 0
    assert client.get("/docs").status_code == 200


def test_api_json_nested_too_deeply_400(client):
    """A body the JSON parser gives up on (recursion) is a 400 saying why, not a bare 'error'."""
    raw = b"[" * 20_000 + b"]" * 20_000  # under the tests' body limit, past the parser's depth
    response = client.post("/generate", content=raw, headers={"content-type": "application/json"})
    body = error_of(response, 400, "invalid_json")
    assert "too deeply" in body["message"], body


@pytest.mark.parametrize(
    ("path", "body", "field", "words"),
    [
        ("/next-token", {"model": "bengio", "prompt": " \n\t"}, "prompt", "other than whitespace"),
        ("/score", {"model": "bengio", "text": "\u3000"}, "text", "other than whitespace"),
        ("/next-token", {"model": "no such/model", "prompt": "a"}, "model", "a model name"),
        (
            "/generate",
            {"model": "bengio", "prompt": "a", "logit_bias": {"007": 1}},
            "logit_bias.007.[key]",
            "a token id in decimal",
        ),
    ],
)
def test_api_pattern_mismatch_says_what_is_asked_in_words(client, path, body, field, words):
    """A 422 for a field that fails one of our patterns says what the pattern asks for, not the
    regex."""
    error = error_of(client.post(path, json=body), 422, "invalid_field", field)
    assert words in error["message"] and "pattern" not in error["message"], error
