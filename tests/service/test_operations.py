"""Request ids, JSON logs, Prometheus metrics, CORS and the API key."""

from __future__ import annotations

import json
import logging
import re

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from service.app import create_app
from service.logs import JsonFormatter
from tests.service.conftest import every_slot_taken, make_settings

BODY = {"model": "attention-seed", "prompt": "Capitu olhou", "max_new_tokens": 2}


def test_request_id_echoed_or_generated(client):
    given = client.post("/generate", json=BODY, headers={"X-Request-Id": "abc-123"})
    assert given.headers["x-request-id"] == "abc-123"
    fresh = client.get("/health")
    assert len(fresh.headers["x-request-id"]) == 32
    odd = client.get("/health", headers={"X-Request-Id": "bad id with spaces"})
    assert odd.headers["x-request-id"] != "bad id with spaces"
    error = client.post(
        "/generate", json={"model": "nope", "prompt": "a"}, headers={"X-Request-Id": "err-1"}
    )
    assert error.status_code == 404 and error.headers["x-request-id"] == "err-1"


def test_access_log_is_one_json_object_without_prompt(client, caplog):
    caplog.set_level(logging.INFO, logger="service.access")
    client.post("/generate", json=BODY, headers={"X-Request-Id": "log-1"})
    records = [r for r in caplog.records if getattr(r, "request_id", None) == "log-1"]
    assert len(records) == 1
    line = json.loads(JsonFormatter().format(records[0]))
    assert line["route"] == "/generate" and line["model"] == "attention-seed"
    assert line["status"] == 200 and line["ms"] > 0 and "prompt" not in line


def test_access_log_of_an_error_names_its_type_and_field_not_its_message(client, caplog):
    """An operator sees what went wrong from the log line alone; the message, which may quote
    the prompt, stays out of it."""
    caplog.set_level(logging.INFO, logger="service.access")
    client.post(
        "/generate",
        json={"model": "attention", "prompt": "segredo", "temperature": -1},
        headers={"X-Request-Id": "log-422"},
    )
    client.post(
        "/generate", json={"model": "nope", "prompt": "a"}, headers={"X-Request-Id": "log-404"}
    )
    client.post("/generate", json=BODY, headers={"X-Request-Id": "log-200"})
    by_id = {r.request_id: r for r in caplog.records if hasattr(r, "request_id")}
    assert by_id["log-422"].error == {"type": "invalid_field", "field": "temperature"}
    assert by_id["log-404"].error == {"type": "model_not_found", "field": "model"}
    assert not hasattr(by_id["log-200"], "error")
    assert "segredo" not in JsonFormatter().format(by_id["log-422"])


def test_access_log_has_prompt_when_asked(caplog):
    caplog.set_level(logging.INFO, logger="service.access")
    with TestClient(create_app(make_settings(log_prompts=True))) as c:
        c.post("/generate", json=BODY, headers={"X-Request-Id": "log-2"})
    record = next(r for r in caplog.records if getattr(r, "request_id", None) == "log-2")
    assert record.prompt == "Capitu olhou"


def test_metrics_in_prometheus_format(client):
    client.post("/generate", json=BODY)
    client.post("/next-token", json={"model": "nope", "prompt": "a"})
    text = client.get("/metrics").text
    assert 'machado_requests_total{model="attention-seed",route="/generate",status="200"}' in text
    assert 'machado_requests_total{model="",route="/next-token",status="404"}' in text
    assert 'machado_generated_tokens_total{model="attention-seed"}' in text
    assert "machado_request_seconds_bucket" in text and "machado_seconds_per_token" in text
    loaded = (
        'machado_model_loaded{model="attention",precision="float32",'
        'provider="CPUExecutionProvider"}'
    )
    assert f"{loaded} 1.0" in text
    assert "machado_in_flight_requests 0.0" in text
    # the process's own series, for watching memory under load
    resident = re.search(r"^process_resident_memory_bytes (\S+)$", text, re.M)
    assert resident and float(resident.group(1)) > 50 * 2**20
    assert "python_gc_collections_total" in text and "python_info" in text


def draft_counts(client) -> dict[str, float]:
    text = client.get("/metrics").text
    pattern = r'^machado_draft_tokens_total\{model="attention",outcome="(\w+)"\} (\S+)$'
    return {outcome: float(n) for outcome, n in re.findall(pattern, text, re.M)}


def test_drafted_tokens_counted(client):
    """A greedy completion that repeats itself is drafted for, and the drafts are counted;
    a sampled one is not."""
    before = draft_counts(client)
    loop = {"model": "attention", "prompt": "uma flor, uma flor", "max_new_tokens": 24}
    assert client.post("/generate", json={**loop, "temperature": 0}).status_code == 200
    after = draft_counts(client)
    assert after["accepted"] > before.get("accepted", 0)
    sampled = {**loop, "temperature": 1.0, "seed": 3}
    assert client.post("/generate", json=sampled).status_code == 200
    assert draft_counts(client) == after
    # Only a model that drafts has the series (the others have no cache slots).
    assert 'machado_draft_tokens_total{model="bengio"' not in client.get("/metrics").text


def test_rejections_counted(client):
    with every_slot_taken(client):
        response = client.post("/next-token", json={"model": "attention", "prompt": "a"})
    assert response.status_code == 429, response.text
    assert 'machado_rejected_requests_total{reason="queue_full"}' in client.get("/metrics").text


def test_api_key_protects_model_endpoints_only():
    with TestClient(create_app(make_settings(api_key="s3cret"))) as c:
        for method, path, body in [
            ("post", "/generate", BODY),
            ("post", "/tokenize", {"text": "a"}),
            ("post", "/detokenize", {"ids": [1]}),
            ("get", "/models", None),
            ("get", "/ab", None),
            ("post", "/v1/completions", {"model": "attention", "prompt": "a"}),
        ]:
            response = getattr(c, method)(path, **({"json": body} if body else {}))
            assert response.status_code == 401, path
            assert response.json()["error"]["type"] == "unauthorized"
            assert response.headers["www-authenticate"] == "Bearer"
        wrong = c.post("/generate", json=BODY, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        ok = c.post("/generate", json=BODY, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        for path in ("/health", "/ready", "/metrics"):
            assert c.get(path).status_code == 200, path


def test_api_key_header_outside_ascii_is_401_not_a_500():
    """A header with bytes outside ASCII (Latin-1, UTF-8, neither) is a wrong key like any
    other: 401."""
    with TestClient(create_app(make_settings(api_key="s3cret"))) as c:
        for header in ("Bearer sécret".encode("latin-1"), "Bearer sécret".encode(), b"Bearer \xff"):
            wrong = c.post("/generate", json=BODY, headers={"Authorization": header})
            assert wrong.status_code == 401, (header, wrong.text)


@pytest.mark.parametrize("key", ["chave-ção", "two words", "tab\tkey", "=start"])
def test_api_key_outside_rfc_6750_token_syntax_is_refused_at_start(key):
    """A key that clients could not send as it is (RFC 6750's token characters) is a settings
    error at start, not a server where no key ever matches."""
    with pytest.raises(ValidationError, match="api_key"):
        make_settings(api_key=key)
    assert make_settings(api_key="Abc-1.2_3~4+5/6==").api_key == "Abc-1.2_3~4+5/6=="


def test_cors_off_by_default_and_configurable(client):
    preflight = {"Origin": "https://example.org", "Access-Control-Request-Method": "POST"}
    assert (
        "access-control-allow-origin" not in client.options("/generate", headers=preflight).headers
    )
    with TestClient(create_app(make_settings(cors_origins="https://example.org"))) as c:
        response = c.options("/generate", headers=preflight)
        assert response.headers["access-control-allow-origin"] == "https://example.org"
        other = c.options("/generate", headers={**preflight, "Origin": "https://evil.test"})
        assert "access-control-allow-origin" not in other.headers


def test_rejected_bodies_logged_and_counted_under_their_path(client, caplog):
    """A 413 or 415 comes before routing, yet its log line and metrics name the endpoint."""
    caplog.set_level(logging.INFO, logger="service.access")
    client.post(
        "/generate",
        content=b"prompt",
        headers={"content-type": "text/plain", "X-Request-Id": "guard-415"},
    )
    records = [r for r in caplog.records if getattr(r, "request_id", None) == "guard-415"]
    assert [(r.route, r.status) for r in records] == [("/generate", 415)]
    metrics = client.get("/metrics").text
    assert re.search(r'machado_requests_total\{[^}]*route="/generate"[^}]*status="415"', metrics), [
        line for line in metrics.splitlines() if "415" in line
    ]


def test_docs_pages_carry_a_policy_allowing_their_own_inline_script_only(client):
    """/docs and /redoc may load from and call this server only; Swagger UI's inline set-up
    script is allowed by its hash. Other responses get no such header."""
    import base64
    import hashlib
    import re

    for path in ("/docs", "/redoc", "/docs/oauth2-redirect"):
        response = client.get(path)
        assert response.status_code == 200, path
        policy = response.headers["content-security-policy"]
        assert "default-src 'none'" in policy and "connect-src 'self'" in policy, policy
        assert "img-src 'self' data:;" in policy and "frame-ancestors 'none'" in policy, policy
        allowed = set(re.findall(r"'sha256-([^']+)'", policy))
        scripts = re.findall(r"<script>(.*?)</script>", response.text, re.S)
        hashes = {base64.b64encode(hashlib.sha256(s.encode()).digest()).decode() for s in scripts}
        assert allowed == hashes and (path == "/redoc" or hashes), (path, allowed, hashes)
        assert response.headers["x-content-type-options"] == "nosniff"
    for path in ("/openapi.json", "/health", "/static-offline-docs/redoc.standalone.js"):
        assert "content-security-policy" not in client.get(path).headers, path
