"""Request limits come from each app's settings, on request classes defined once at import:
validation refuses what the serving app's settings refuse, defaults follow the limits, and
the OpenAPI schema states the configured values."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from service.app import create_app
from service.limits import limits_of
from service.openai_schemas import CompletionRequest
from service.schemas import CompareRequest, GenerateRequest, NextTokenRequest
from service.settings import Settings
from tests.service.conftest import error_of, make_settings

SMALL = dict(
    max_prompt_chars=50,
    max_new_tokens=3,
    max_top_k=2,
    max_logprobs=1,
    max_stop_strings=2,
    max_logit_bias=1,
    max_score_chars=60,
    max_compare_models=1,
    max_completions=2,
)


@pytest.fixture(scope="module")
def small():
    """The shipped models behind an app with small limits."""
    with TestClient(create_app(make_settings(**SMALL))) as client:
        yield client


def properties(schema: dict, name: str) -> dict:
    return schema["components"]["schemas"][name]["properties"]


def test_request_limits_openapi_states_the_configured_values(small):
    schema = small.app.openapi()
    assert "x-machado" not in json.dumps(schema)  # every mark was resolved
    generate = properties(schema, "GenerateRequest")
    assert generate["prompt"]["maxLength"] == 50
    assert generate["max_new_tokens"]["maximum"] == 3
    assert generate["max_new_tokens"]["default"] == 3  # 16, capped by the limit
    assert generate["top_k"]["maximum"] == 2
    assert generate["logprobs"]["maximum"] == 1
    assert generate["stop"]["maxItems"] == 2
    assert generate["logit_bias"]["maxProperties"] == 1
    assert properties(schema, "NextTokenRequest")["top_k"]["default"] == 2
    assert properties(schema, "CompareRequest")["models"]["anyOf"][0]["maxItems"] == 1
    assert properties(schema, "ScoreRequest")["text"]["maxLength"] == 60
    assert properties(schema, "DetokenizeRequest")["ids"]["maxItems"] == 60
    completion = properties(schema, "CompletionRequest")
    assert completion["n"]["maximum"] == 2
    assert completion["max_tokens"]["default"] == 3
    assert [s.get("maxItems") for s in completion["prompt"]["anyOf"]] == [None, 2, 50, 2]
    assert completion["stop"]["anyOf"][1]["maxItems"] == 2  # OpenAI's 4, or fewer


def test_request_limits_two_apps_in_one_process_keep_their_own(small):
    """The limits are each app's, though the classes are shared."""
    body = {"model": "attention-seed", "prompt": "Capitu", "max_new_tokens": 4}
    error = error_of(small.post("/generate", json=body), 422, "invalid_field", "max_new_tokens")
    assert "less than or equal to 3" in error["message"]
    with TestClient(create_app(make_settings())) as default:
        assert default.post("/generate", json=body).status_code == 200
        assert properties(default.app.openapi(), "GenerateRequest")["max_new_tokens"][
            "maximum"
        ] == (make_settings().max_new_tokens)
    assert small.post("/generate", json=body).status_code == 422


def test_request_limits_defaults_follow_the_limits(small):
    """A request that leaves out max_new_tokens, top_k or max_tokens gets the default or the
    limit, whichever is smaller: never a value the server refuses."""
    generated = small.post("/generate", json={"model": "attention-seed", "prompt": "Capitu"})
    assert generated.status_code == 200, generated.text
    assert generated.json()["usage"]["completion_tokens"] <= 3
    nxt = small.post("/next-token", json={"model": "attention-seed", "prompt": "Capitu"})
    assert len(nxt.json()["top"]) == 2
    completion = small.post("/v1/completions", json={"model": "attention-seed", "prompt": "a"})
    assert completion.json()["usage"]["completion_tokens"] <= 3


@pytest.mark.parametrize(
    "body, field, words",
    [
        ({"prompt": "a" * 51}, "prompt", "at most 50 characters"),
        ({"top_k": 3}, "top_k", "less than or equal to 2"),
        ({"logprobs": 2}, "logprobs", "less than or equal to 1"),
        ({"stop": ["a", "b", "c"]}, "stop", "List should have at most 2 items"),
        ({"logit_bias": {"1": 1, "2": 1}}, "logit_bias", "at most 1 items after validation, not 2"),
    ],
)
def test_request_limits_each_kind_of_bound_is_refused(small, body, field, words):
    request = {"model": "attention-seed", "prompt": "Capitu", **body}
    error = error_of(small.post("/generate", json=request), 422, "invalid_field", field)
    assert words in error["message"]


def test_request_limits_completions_stop_past_the_limit_is_one_message(small):
    body = {"model": "attention-seed", "prompt": "Capitu", "stop": ["a", "b", "c"]}
    error = error_of(small.post("/v1/completions", json=body), 422, "invalid_field", "stop")
    assert "a list of up to 2 such texts" in error["message"]
    assert "constrained-str" not in error["message"]


def test_request_limits_outside_an_app_are_the_settings_defaults():
    """A body validated by a script, outside any app: the defaults of the settings."""
    defaults = Settings.model_construct()
    request = GenerateRequest(model="m", prompt="p")
    assert request.max_new_tokens == min(16, defaults.max_new_tokens)
    with pytest.raises(ValidationError):
        GenerateRequest(model="m", prompt="p", max_new_tokens=defaults.max_new_tokens + 1)
    with limits_of(make_settings(**SMALL)):
        assert GenerateRequest(model="m", prompt="p").max_new_tokens == 3
        assert NextTokenRequest(model="m", prompt="p").top_k == 2
        assert CompareRequest(prompt="p").top_n == 2
        assert CompletionRequest(model="m", prompt="p").max_tokens == 3
        with pytest.raises(ValidationError):
            CompareRequest(prompt="p", models=["a", "b"])
    assert GenerateRequest(model="m", prompt="p").max_new_tokens == 16


def test_request_limits_compare_with_no_model_loaded_is_503(tmp_path):
    (tmp_path / "empty").mkdir()
    with TestClient(create_app(make_settings(models_dir=tmp_path / "empty"))) as client:
        error_of(client.post("/compare", json={"prompt": "Capitu"}), 503, "not_ready")


@pytest.mark.parametrize("field", ["logprobs", "best_of", "n", "max_tokens"])
@pytest.mark.parametrize("value", [False, True, "1"])
def test_request_limits_bounded_numbers_are_json_numbers_only(small, field, value):
    """A bounded number, optional or not, is a JSON number: not true, false or a string."""
    body = {"model": "attention-seed", "prompt": "Capitu", field: value}
    error_of(small.post("/v1/completions", json=body), 422, "invalid_field", field)
