"""The real server in a subprocess on a free port, called over HTTP with httpx."""

from __future__ import annotations

import json
import signal
import threading
import time

import httpx
import pytest

from bench.common import start_server

pytestmark = pytest.mark.slow  # real weights on a real port, training runs, or a browser


@pytest.fixture(scope="module")
def server():
    base, proc = start_server(
        {
            "MACHADO_MAX_NEW_TOKENS": "64",
            "MACHADO_DRAIN_TIMEOUT_S": "20",
            "MACHADO_BODY_TIMEOUT_S": "1.5",
        }
    )
    yield base, proc
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)


def test_e2e_every_endpoint(server):
    base, _ = server
    with httpx.Client(base_url=base, timeout=30) as http:
        assert http.get("/health").json() == {"status": "ok"}
        assert http.get("/ready").json()["ready"] is True
        assert len(http.get("/models").json()["models"]) == 3
        assert http.get("/docs").status_code == 200
        assert http.get("/openapi.json").json()["info"]["title"] == "machado-lm"
        gen = http.post(
            "/generate",
            json={
                "model": "attention",
                "prompt": "Capitu",
                "max_new_tokens": 64,
                "temperature": 0.8,
                "seed": 1,
            },
        ).json()
        assert gen["usage"]["completion_tokens"] + (gen["finish_reason"] != "length") >= 1
        nxt = http.post("/next-token", json={"model": "bengio", "prompt": "A vida"}).json()
        assert len(nxt["top"]) == 10
        att = http.post("/attention", json={"model": "attention", "prompt": "Capitu"}).json()
        assert len(att["attention"]) == 6
        score = http.post("/score", json={"model": "attention-seed", "text": "A vida é"}).json()
        assert score["bits_per_character"] > 0
        tok = http.post("/tokenize", json={"text": "Capitu"}).json()
        assert tok["ids"]
        text = http.post("/detokenize", json={"ids": tok["ids"]}).json()["text"]
        assert text == "Capitu"
        assert http.get("/v1/models/bengio").json()["id"] == "bengio"
        bad = http.post("/generate", json={"model": "nope", "prompt": "a"})
        assert bad.status_code == 404 and bad.json()["error"]["type"] == "model_not_found"


def test_e2e_a_body_that_never_arrives_is_408_and_the_connection_closed(server):
    """A client that sends its headers and part of its body, then nothing, is answered 408 once
    MACHADO_BODY_TIMEOUT_S has passed, and its connection closed: it holds nothing for ever."""
    import socket

    base, _ = server
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        connection.sendall(
            b"POST /tokenize HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n{"text":'
        )
        started = time.monotonic()
        answer = b""
        while chunk := connection.recv(4096):  # until the server closes the connection
            answer += chunk
        waited = time.monotonic() - started
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), answer
    assert json.loads(body)["error"] == {
        "type": "request_timeout",
        "message": "the body did not arrive within 1.5 s (8 bytes came of 100)",
        "field": None,
    }
    assert waited < 5, waited  # the message names the limit; no lower bound on a clock


def test_e2e_logs_are_json_lines_naming_providers(server):
    _, proc = server
    lines = [
        json.loads(line) for line in proc.log_path.read_text().splitlines() if line.startswith("{")
    ]
    assert any(
        line.get("provider") == "CPUExecutionProvider" and line.get("model") == "attention"
        for line in lines
    ), lines[:5]
    access = [line for line in lines if line.get("logger") == "service.access"]
    assert access and all({"request_id", "route", "status", "ms"} <= set(line) for line in access)


def test_e2e_shutdown_drains_in_flight_requests(server):
    """SIGTERM while a generation runs: the generation still completes, then the server exits."""
    base, proc = server
    result = {}

    def long_request() -> None:
        response = httpx.post(
            f"{base}/generate",
            timeout=60,
            json={
                "model": "attention",
                "prompt": "Capitu " * 30,
                "max_new_tokens": 64,
                "temperature": 0,
            },
        )
        result["status"] = response.status_code
        result["tokens"] = response.json()["usage"]["completion_tokens"]

    thread = threading.Thread(target=long_request)
    thread.start()
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    thread.join(60)
    assert result == {"status": 200, "tokens": 64}
    # uvicorn re-raises the signal once drained, so the exit status names SIGTERM.
    assert proc.wait(30) in (0, -signal.SIGTERM)
