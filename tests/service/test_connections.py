"""The real server's connections: a client has MACHADO_HEAD_TIMEOUT_S to send each request's
head, from the moment it connects or from the end of its last answer; uvicorn alone would wait
for ever. An answer, however long, is never cut by it."""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest

from bench.common import start_server

pytestmark = pytest.mark.slow  # real weights on a real port, training runs, or a browser

HEAD_TIMEOUT_S = 1.0


@pytest.fixture(scope="module")
def server():
    base, proc = start_server({"MACHADO_HEAD_TIMEOUT_S": str(HEAD_TIMEOUT_S)})
    yield base, proc
    proc.terminate()
    proc.wait(30)


def connect(base: str) -> socket.socket:
    host, port = base.removeprefix("http://").split(":")
    connection = socket.create_connection((host, int(port)), timeout=10)
    return connection


def seconds_until_closed(connection: socket.socket, started: float) -> float:
    """Reads until the server closes the connection (it answers nothing first)."""
    assert connection.recv(4096) == b""
    return time.monotonic() - started


def test_connection_that_sends_nothing_is_closed_at_the_head_timeout(server):
    """Closed, and the log says why."""
    base, proc = server
    started = time.monotonic()
    with connect(base) as connection:
        waited = seconds_until_closed(connection, started)
    assert HEAD_TIMEOUT_S <= waited < HEAD_TIMEOUT_S + 2, waited
    lines = [json.loads(x) for x in proc.log_path.read_text().splitlines() if x.startswith("{")]
    assert any(
        line["logger"] == "service.connections"
        and f"no whole request head within {HEAD_TIMEOUT_S:g} s" in line["message"]
        for line in lines
    ), [line["message"] for line in lines[-10:]]


def test_connection_that_trickles_its_head_is_closed_though_bytes_keep_coming(server):
    """Each byte would restart uvicorn's keep-alive timeout; the head's deadline stands."""
    base, _ = server
    head = b"POST /tokenize HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
    started = time.monotonic()
    with connect(base) as connection:
        for byte in head:
            try:
                connection.sendall(bytes([byte]))
            except OSError:  # closed by the server: what this test waits for
                break
            time.sleep(0.1)
        waited = seconds_until_closed(connection, started)
    assert HEAD_TIMEOUT_S <= waited < HEAD_TIMEOUT_S + 2, waited


def test_long_answer_is_not_cut_and_the_connection_serves_the_next_request(server):
    """A stream that lasts past the head timeout runs to its end; the kept-alive connection
    then has the head timeout again for its next request."""
    base, _ = server
    # 500 tokens, end-of-text banned: seconds of generation on any CPU.
    body = {
        "model": "attention",
        "prompt": "Capitu",
        "max_new_tokens": 500,
        "logit_bias": {"0": -100},
        "stream": True,
    }
    with httpx.Client(base_url=base, timeout=60) as http:
        started = time.monotonic()
        with http.stream("POST", "/generate", json=body) as response:
            events = [line for line in response.iter_lines() if line.startswith("event:")]
        lasted = time.monotonic() - started
        assert events[-1] == "event: done", events[-3:]
        assert lasted > HEAD_TIMEOUT_S, f"the stream took {lasted:.2f} s: too short to tell"
        time.sleep(HEAD_TIMEOUT_S / 3)
        again = http.post("/tokenize", json={"text": "Capitu"})
        assert again.status_code == 200
        assert http.get("/metrics").status_code == 200
