"""Every endpoint and every error of the API, on the shipped models."""

from __future__ import annotations

import math

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from tests.service.conftest import context_of, every_slot_taken, make_settings


def _error(response, status: int, type_: str, field: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["type"] == type_, error
    assert error["message"]
    if field is not None:
        assert error["field"] == field, error
    return error


def test_api_health_ready_models(client):
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    models = {m["name"]: m for m in client.get("/models").json()["models"]}
    assert set(models) == {"attention", "attention-seed", "bengio"}
    assert models["attention"]["has_attention"] and not models["bengio"]["has_attention"]
    assert models["bengio"]["provider"] == "CPUExecutionProvider"
    assert models["attention"]["metrics"]["test"]["bits_per_character"] > 0
    assert models["attention"]["vocabulary"] == 8192 and models["attention"]["context"] == 256


def test_api_generate_greedy_is_deterministic(client):
    body = {
        "model": "attention",
        "prompt": "Capitu olhou para mim",
        "max_new_tokens": 8,
        "temperature": 0,
    }
    first, second = (
        client.post("/generate", json=body).json(),
        client.post("/generate", json=body).json(),
    )
    assert first["text"] == second["text"] and len(first["tokens"]) == 8
    assert first["finish_reason"] == "length"
    assert first["usage"] == {"prompt_tokens": 6, "completion_tokens": 8, "total_tokens": 14}
    assert "".join(t["token"] for t in first["tokens"]) == first["text"]
    assert all(t["logprob"] <= 0 for t in first["tokens"])


def test_api_generate_same_seed_same_output(client):
    body = {
        "model": "bengio",
        "prompt": "A vida é",
        "max_new_tokens": 12,
        "temperature": 1.0,
        "top_p": 0.9,
        "seed": 42,
    }
    a, b = client.post("/generate", json=body).json(), client.post("/generate", json=body).json()
    c = client.post("/generate", json={**body, "seed": 43}).json()
    assert a["text"] == b["text"] and a["text"] != c["text"]


def test_api_generate_logprobs_and_stop(client):
    body = {
        "model": "attention-seed",
        "prompt": "Capitu",
        "max_new_tokens": 20,
        "temperature": 0,
        "logprobs": 3,
    }
    full = client.post("/generate", json=body).json()
    assert all(len(t["top_logprobs"]) == 3 for t in full["tokens"])
    stop = full["text"][4:7]
    cut = client.post("/generate", json={**body, "stop": [stop]}).json()
    assert cut["finish_reason"] == "stop"
    assert cut["text"] == full["text"][: full["text"].find(stop)]


def test_api_generate_long_prompt_keeps_its_end(client):
    body = {"model": "bengio", "prompt": "Era uma vez " * 30, "max_new_tokens": 3}
    result = client.post("/generate", json=body).json()
    assert result["prompt_truncated"] is True
    assert result["usage"]["prompt_tokens"] == context_of(client, "bengio")


def test_api_next_token(client):
    result = client.post(
        "/next-token", json={"model": "attention", "prompt": "Capitu olhou", "top_k": 5}
    ).json()
    assert result["tokens"][0] == "<|endoftext|>" and len(result["top"]) == 5
    probs = [c["probability"] for c in result["top"]]
    assert probs == sorted(probs, reverse=True) and sum(probs) <= 1.0 + 1e-9
    assert math.isclose(result["top"][0]["logprob"], math.log(probs[0]), rel_tol=1e-9)
    assert 0 < result["entropy_bits"] < 13


def test_api_attention_shapes_and_rows(client):
    result = client.post(
        "/attention", json={"model": "attention", "prompt": "Capitu olhou para mim"}
    ).json()
    n = len(result["tokens"])
    weights = result["attention"]
    assert (len(weights), len(weights[0]), len(weights[0][0]), len(weights[0][0][0])) == (
        6,
        6,
        n,
        n,
    )
    for row in weights[2][3]:
        assert abs(sum(row) - 1) < 1e-3
    one = client.post(
        "/attention", json={"model": "attention", "prompt": "Capitu olhou", "layer": 5, "head": 0}
    ).json()
    assert one["layers"] == [5] and one["heads"] == [0] and len(one["attention"]) == 1


def test_api_attention_is_bounded(client):
    result = client.post(
        "/attention", json={"model": "attention-seed", "prompt": "palavra " * 200}
    ).json()
    assert result["truncated"] is True
    assert len(result["tokens"]) == context_of(client, "attention-seed")


def test_api_attention_errors(client):
    _error(
        client.post("/attention", json={"model": "bengio", "prompt": "x"}),
        422,
        "no_attention",
        "model",
    )
    _error(
        client.post("/attention", json={"model": "attention", "prompt": "x", "layer": 6}),
        404,
        "layer_not_found",
        "layer",
    )
    _error(
        client.post("/attention", json={"model": "attention", "prompt": "x", "head": 9}),
        404,
        "head_not_found",
        "head",
    )


def test_api_score(client):
    text = "Não tive filhos, não transmiti a nenhuma criatura o legado da nossa miséria."
    result = client.post(
        "/score", json={"model": "attention", "text": text, "per_token": True}
    ).json()
    assert result["characters"] == len(text)
    assert len(result["token_logprobs"]) == result["tokens"]
    nll = -sum(t["logprob"] for t in result["token_logprobs"])
    assert math.isclose(nll, result["nll_nats"], rel_tol=1e-9)
    assert math.isclose(result["bits_per_character"], nll / math.log(2) / len(text), rel_tol=1e-9)
    plain = client.post("/score", json={"model": "attention", "text": text}).json()
    assert "token_logprobs" not in plain
    for answer in (result, plain):
        assert answer["seconds"] > 0, answer
        speed = answer["tokens"] / answer["seconds"]
        assert math.isclose(answer["tokens_per_second"], speed, rel_tol=1e-9), answer


def without_timing(answer: dict) -> dict:
    """A /score answer less what changes from one run to the next."""
    return {k: v for k, v in answer.items() if k not in ("seconds", "tokens_per_second")}


def test_api_score_attention_beats_bengio_on_machado(client):
    text = (
        "Capitu tinha os olhos de cigana oblíqua e dissimulada, e eu não sabia "
        "o que dizer, porque a vida é assim mesmo."
    )
    bpc = {
        m: client.post("/score", json={"model": m, "text": text}).json()["bits_per_character"]
        for m in ("attention", "bengio")
    }
    assert bpc["attention"] < bpc["bengio"], bpc


def test_api_tokenize(client):
    result = client.post("/tokenize", json={"text": "Não há coração"}).json()
    assert "".join(result["tokens"]) == "Não há coração"
    assert result["offsets"][0][0] == 0 and result["offsets"][-1][1] == len("Não há coração")
    assert len(result["ids"]) == len(result["tokens"]) == len(result["offsets"])


def test_api_end_of_text_in_a_prompt_is_a_document_boundary(client):
    """The text <|endoftext|> is the end-of-text token, as between the training documents: what
    comes before it is another document, which the Bengio model does not read across."""
    ids = client.post("/tokenize", json={"text": "fim.<|endoftext|>Capitu"}).json()["ids"]
    assert ids.count(0) == 1
    alone = {"model": "bengio", "prompt": "Capitu", "top_k": 5}
    after = alone | {"prompt": "Era uma vez um homem.<|endoftext|>Capitu"}
    alone, after = (client.post("/next-token", json=body).json() for body in (alone, after))
    # The model's n tokens (n >= 4): the end of the first text, the boundary, then the prompt.
    assert context_of(client, "bengio") >= len(alone["tokens"]) + 1 == 4
    assert after["tokens"][-len(alone["tokens"]) :] == alone["tokens"] != after["tokens"]
    assert [c["token"] for c in after["top"]] == [c["token"] for c in alone["top"]]
    for a, b in zip(after["top"], alone["top"], strict=True):
        assert math.isclose(a["logprob"], b["logprob"], abs_tol=1e-4)


def test_api_detokenize_inverts_tokenize(client):
    text = "Não há coração, disse Capitu 𝔄!"
    ids = client.post("/tokenize", json={"text": text}).json()["ids"]
    result = client.post("/detokenize", json={"ids": ids, "model": "bengio"})
    assert result.status_code == 200
    assert result.json()["text"] == text
    assert result.json()["tokens"] == client.post("/tokenize", json={"text": text}).json()["tokens"]
    # The 4-byte character is four byte-level tokens: cut after its first, no character.
    cut = ids[:-4]  # without "!" and the character's last three bytes
    assert client.post("/detokenize", json={"ids": cut}).json()["text"].endswith(" \ufffd")


def test_api_detokenize_bad_ids(client):
    _error(client.post("/detokenize", json={"ids": [1, 8192]}), 404, "token_not_found", "ids")
    _error(client.post("/detokenize", json={"ids": []}), 422, "invalid_field", "ids")
    _error(client.post("/detokenize", json={"ids": [-1]}), 422, "invalid_field", "ids.0")
    _error(client.post("/detokenize", json={"ids": ["a"]}), 422, "invalid_field", "ids.0")
    _error(client.post("/detokenize", json={"ids": [1], "model": "gpt"}), 404, "model_not_found")


def test_api_unknown_model_404(client):
    _error(
        client.post("/generate", json={"model": "gpt", "prompt": "a"}),
        404,
        "model_not_found",
        "model",
    )
    _error(client.post("/tokenize", json={"text": "a", "model": "gpt"}), 404, "model_not_found")


@pytest.mark.parametrize("name", ["../models", "a/b", "..", "x y", ".hidden", "a" * 65])
def test_api_model_names_with_path_characters_422(client, name):
    _error(
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
    _error(client.post("/generate", json=body), 422, "invalid_field", field)


def test_api_nan_literal_temperature_422(client):
    raw = b'{"model": "attention", "prompt": "a", "temperature": NaN}'
    response = client.post("/generate", content=raw, headers={"content-type": "application/json"})
    _error(response, 422, "invalid_field", "temperature")


def test_api_malformed_json_400(client):
    response = client.post(
        "/generate", content=b'{"model": ', headers={"content-type": "application/json"}
    )
    _error(response, 400, "invalid_json")


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
    error = _error(response, 422, "invalid_field", field)
    assert "lone surrogate" in error["message"], error


@pytest.mark.parametrize("raw", [b"", b"  \r\n\t"])
@pytest.mark.parametrize("path", ["/generate", "/tokenize", "/v1/completions"])
def test_api_empty_body_is_400_saying_so(client, path, raw):
    response = client.post(path, content=raw, headers={"content-type": "application/json"})
    error = _error(response, 400, "invalid_json")
    assert "the body is empty" in error["message"], error


def test_api_invalid_utf8_400(client):
    raw = b'{"model": "attention", "prompt": "\xff\xfe"}'
    response = client.post("/generate", content=raw, headers={"content-type": "application/json"})
    _error(response, 400, "invalid_utf8")


def test_api_lone_surrogate_422(client):
    raw = b'{"model": "attention", "prompt": "a\\ud800b"}'
    response = client.post("/generate", content=raw, headers={"content-type": "application/json"})
    _error(response, 422, "invalid_field", "prompt")


def test_api_wrong_content_type_415(client):
    response = client.post(
        "/generate",
        content=b"model=attention",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    _error(response, 415, "unsupported_media_type")


def test_api_body_over_limit_413(client):
    """Refused before it is read to its end: the connection closes, or the rest of the body
    would read as the next request."""
    response = client.post("/score", json={"model": "attention", "text": "a" * 70_000})
    _error(response, 413, "payload_too_large")
    assert response.headers["connection"] == "close"


def test_api_prompt_over_configured_limit_422(client):
    long_prompt = {"model": "attention", "prompt": "a" * 2001}
    _error(client.post("/generate", json=long_prompt), 422, "invalid_field", "prompt")
    long_text = {"model": "attention", "text": "a" * 5001}
    _error(client.post("/score", json=long_text), 422, "invalid_field", "text")


def test_api_unknown_route_and_method(client):
    error = _error(client.get("/nothing"), 404, "not_found")
    assert error["message"] == (
        "no endpoint for GET at this path; the API is listed at /docs (/openapi.json)"
    )
    error = _error(client.get("/generate"), 405, "method_not_allowed")
    assert error["message"] == "GET is not allowed on /generate; allowed: POST"


def test_api_chat_completions_points_to_completions(client):
    """OpenAI clients try chat first: the answer says why there is none and what to use."""
    chat = {"model": "attention", "messages": [{"role": "user", "content": "Capitu"}]}
    error = _error(client.post("/v1/chat/completions", json=chat), 404, "not_found")
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
    _error(response, 429, "overloaded")
    assert response.headers["retry-after"] == "1"
    assert client.post("/next-token", json={"model": "attention", "prompt": "a"}).status_code == 200


def test_api_timeout_504():
    with TestClient(create_app(make_settings(request_timeout_s=0.001))) as slow:
        response = slow.post(
            "/generate", json={"model": "attention", "prompt": "Capitu", "max_new_tokens": 32}
        )
    _error(response, 504, "timeout")


def test_api_not_ready_without_models(tmp_path):
    with TestClient(create_app(make_settings(models_dir=tmp_path))) as empty:
        assert empty.get("/ready").status_code == 503
        _error(empty.post("/tokenize", json={"text": "a"}), 503, "not_ready")
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
        _error(
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


MACHADO = (
    "Não tive filhos, não transmiti a nenhuma criatura o legado da nossa miséria. Capitu tinha "
    "os olhos de cigana oblíqua e dissimulada, e eu não sabia o que dizer, porque a vida é "
    "assim mesmo: uma ópera, e o tenor e o barítono lutavam pelo soprano."
)


def test_api_score_window_defaults_to_the_models_own(client):
    """Asking for the model's own window scores exactly what the default does."""
    models = {m["name"]: m for m in client.get("/models").json()["models"]}
    assert models["attention"]["score_window"] == 256 and models["bengio"]["score_window"] == 128
    for name in ("attention", "bengio"):
        default = client.post("/score", json={"model": name, "text": MACHADO}).json()
        own = models[name]["score_window"]
        asked = client.post("/score", json={"model": name, "text": MACHADO, "window": own}).json()
        assert without_timing(asked) == without_timing(default)


def test_api_score_smaller_window_reads_less_context(client):
    """One token of context costs the attention model bits; the window and stride say so."""
    full = client.post("/score", json={"model": "attention", "text": MACHADO}).json()
    one = client.post("/score", json={"model": "attention", "text": MACHADO, "window": 1}).json()
    assert (one["window"], one["stride"]) == (1, 1)
    assert one["tokens"] == full["tokens"] and one["characters"] == full["characters"]
    assert one["bits_per_character"] > full["bits_per_character"] + 0.2, (one, full)
    eight = client.post("/score", json={"model": "attention", "text": MACHADO, "window": 8})
    assert (eight.json()["window"], eight.json()["stride"]) == (8, 4)


@pytest.mark.parametrize(("past", "same"), [(0, True), (51, True), (-1, False), (-2, False)])
def test_api_score_bengio_reads_its_n_tokens_from_2n_minus_3(client, past, same):
    """With windows of 2n - 3 tokens or more every token reads at least n, Bengio's whole
    context; with fewer, some read less (the window is 2n - 3 + past)."""
    window = 2 * context_of(client, "bengio") - 3 + past
    default = client.post("/score", json={"model": "bengio", "text": MACHADO}).json()
    asked = client.post(
        "/score", json={"model": "bengio", "text": MACHADO, "window": window}
    ).json()
    assert math.isclose(asked["nll_nats"], default["nll_nats"], rel_tol=1e-6) is same, (
        asked["nll_nats"],
        default["nll_nats"],
    )


def test_api_score_window_past_the_models_is_cut_to_it(client):
    """A window longer than the model's own scores with the model's own, and says so."""
    default = client.post("/score", json={"model": "attention", "text": MACHADO}).json()
    longer = client.post("/score", json={"model": "attention", "text": MACHADO, "window": 9999})
    assert longer.status_code == 200
    assert without_timing(longer.json()) == without_timing(default)
    _error(
        client.post("/score", json={"model": "bengio", "text": "a b", "window": 0}),
        422,
        "invalid_field",
        "window",
    )


def test_api_json_nested_too_deeply_400(client):
    """A body the JSON parser gives up on (recursion) is a 400 saying why, not a bare 'error'."""
    raw = b"[" * 20_000 + b"]" * 20_000  # under the tests' body limit, past the parser's depth
    response = client.post("/generate", content=raw, headers={"content-type": "application/json"})
    body = _error(response, 400, "invalid_json")
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
    error = _error(client.post(path, json=body), 422, "invalid_field", field)
    assert words in error["message"] and "pattern" not in error["message"], error
