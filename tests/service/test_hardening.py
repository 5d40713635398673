"""The real server against clients that misbehave: a stream nobody reads, a shutdown with work
under way, request heads that are not HTTP or are too large. Each test runs `python -m service`
on a loopback port and bounds every wait."""

from __future__ import annotations

import contextlib
import json
import re
import signal
import socket
import threading
import time

import httpx
import pytest

from bench.common import start_server

pytestmark = pytest.mark.slow  # real weights on a real port, training runs, or a browser


def connect(base: str, receive_buffer: int | None = None) -> socket.socket:
    host, port = base.removeprefix("http://").split(":")
    connection = socket.socket()
    if receive_buffer is not None:  # before connecting: it sets the window the server sees
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    connection.settimeout(10)
    connection.connect((host, int(port)))
    return connection


def post_head(path: str, body: bytes) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def metric(base: str, name: str) -> float:
    """The value of one series of /metrics (0 where it has none yet)."""
    text = httpx.get(f"{base}/metrics", timeout=10).text
    pattern = re.escape(name) + r" ([0-9.e+-]+)"
    found = re.search("^" + pattern + "$", text, re.M)
    return float(found.group(1)) if found else 0.0


def wait_for(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return False


def access_lines(proc) -> list[dict]:
    lines = [json.loads(x) for x in proc.log_path.read_text().splitlines() if x.startswith("{")]
    return [line for line in lines if line.get("logger") == "service.access"]


def test_stream_that_is_never_read_is_cut_and_its_slot_freed():
    """A client that asks for a large stream and never reads holds its slot only until the
    send timeout: then its connection is cut, the slot serves the next request, and
    /metrics counts a slow reader."""
    base, proc = start_server(
        {"MACHADO_SEND_TIMEOUT_S": "2", "MACHADO_MAX_CONCURRENCY": "1", "MACHADO_MAX_QUEUE": "0"}
    )
    try:
        # An answer of about 7 MB: three prompts echoed with 5 alternatives per token, 4 times,
        # then 4 x 512 tokens with theirs: more than the kernel's buffers between the two hold
        # (about 4 MB on Linux), but within MACHADO_MAX_ANSWER_ITEMS.
        body = {
            "model": "bengio",
            "prompt": [[17] * 2000] * 3,
            "max_tokens": 512,
            "n": 4,
            "logprobs": 5,
            "echo": True,
            "stream": True,
            "logit_bias": {"0": -100},
        }
        stalled = connect(base, receive_buffer=4096)
        stalled.sendall(post_head("/v1/completions", json.dumps(body).encode()))
        assert wait_for(lambda: metric(base, "machado_in_flight_requests") == 1, 10)
        cut = wait_for(
            lambda: metric(base, 'machado_connections_closed_total{reason="slow_reader"}') == 1,
            30,
        )
        assert cut, httpx.get(f"{base}/metrics").text[-2000:]
        assert wait_for(lambda: metric(base, "machado_in_flight_requests") == 0, 10)
        answer = httpx.post(
            f"{base}/next-token", json={"model": "bengio", "prompt": "Capitu"}, timeout=30
        )
        assert answer.status_code == 200, answer.text
        stalled.close()
        assert wait_for(lambda: "cut: its client read none" in proc.log_path.read_text(), 5)
    finally:
        proc.terminate()
        proc.wait(30)


def _stream(base: str, path: str, body: dict, out: dict, key: str) -> None:
    """Reads a stream to its end; ``out[key]`` gets the events' data lines and the status."""
    events = []
    try:
        with httpx.stream("POST", f"{base}{path}", json=body, timeout=60) as response:
            out[key + "_status"] = response.status_code
            for line in response.iter_lines():
                if line.startswith(("data:", "event:")):
                    events.append(line)
    except httpx.HTTPError as error:
        events.append(f"transport error: {type(error).__name__}")
    out[key] = events


def _plain(base: str, path: str, body: dict, out: dict, key: str) -> None:
    try:
        response = httpx.post(f"{base}{path}", json=body, timeout=60)
        out[key] = (response.status_code, response.json())
    except httpx.HTTPError as error:
        out[key] = (None, f"transport error: {type(error).__name__}")


LONG = {"logit_bias": {"0": -100}, "temperature": 0}


def _start_requests(base: str) -> tuple[dict, list[threading.Thread]]:
    out: dict = {}
    jobs = [
        ("/generate", {"model": "attention", "prompt": "Capitu", "max_new_tokens": 512,
                       "stream": True, **LONG}, _stream, "generate_stream"),
        ("/v1/completions", {"model": "attention", "prompt": "Capitu", "max_tokens": 512,
                             "n": 4, "stream": True, **LONG}, _stream, "completions_stream"),
        ("/generate", {"model": "attention", "prompt": "Bentinho", "max_new_tokens": 512,
                       **LONG}, _plain, "generate_plain"),
        ("/v1/completions", {"model": "attention", "prompt": "Escobar", "max_tokens": 512,
                             "n": 4, **LONG}, _plain, "completions_plain"),
    ]  # fmt: skip
    threads = [
        threading.Thread(target=run, args=(base, path, body, out, key))
        for path, body, run, key in jobs
    ]
    for thread in threads:
        thread.start()
    return out, threads


def test_sigterm_past_the_drain_time_ends_every_request_properly_and_exits_0():
    """Work that cannot finish within the drain time still gets an ending: streams an error
    event saying the server is shutting down, plain requests a 503; new connections are
    refused at once, every request has its access-log line, and the process exits 0."""
    base, proc = start_server({"MACHADO_DRAIN_TIMEOUT_S": "2", "MACHADO_MAX_CONCURRENCY": "8"})
    out, threads = _start_requests(base)
    assert wait_for(lambda: metric(base, "machado_in_flight_requests") == 4, 10)
    signalled = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{base}/health", timeout=2)
    for thread in threads:
        thread.join(30)
    assert proc.wait(30) == 0
    assert time.monotonic() - signalled < 2 + 3
    for key in ("generate_stream", "completions_stream"):
        assert out[key + "_status"] == 200
        assert "shutting_down" in out[key][-1], out[key][-3:]
    assert out["generate_stream"][-2] == "event: error", out["generate_stream"][-3:]
    for key in ("generate_plain", "completions_plain"):
        status, answer = out[key]
        assert status == 503 and answer["error"]["type"] == "shutting_down", out[key]
    statuses = sorted((line["route"], line["status"]) for line in access_lines(proc))
    assert statuses.count(("/generate", 200)) == 1 and statuses.count(("/generate", 503)) == 1
    assert statuses.count(("/v1/completions", 200)) == 1
    assert statuses.count(("/v1/completions", 503)) == 1, statuses


def test_sigterm_lets_work_that_fits_the_drain_time_finish():
    """Within the drain time, every request under way finishes as it would have."""
    base, proc = start_server({"MACHADO_DRAIN_TIMEOUT_S": "60", "MACHADO_MAX_CONCURRENCY": "8"})
    out, threads = _start_requests(base)
    assert wait_for(lambda: metric(base, "machado_in_flight_requests") == 4, 10)
    proc.send_signal(signal.SIGTERM)
    for thread in threads:
        thread.join(60)
    assert proc.wait(30) == 0
    assert out["generate_stream"][-2:][0] == "event: done", out["generate_stream"][-3:]
    assert out["completions_stream"][-1] == "data: [DONE]", out["completions_stream"][-3:]
    assert out["generate_plain"][0] == 200
    assert out["generate_plain"][1]["usage"]["completion_tokens"] == 512
    assert out["completions_plain"][0] == 200
    assert len(out["completions_plain"][1]["choices"]) == 4


@pytest.fixture(scope="module")
def server():
    base, proc = start_server({"MACHADO_MAX_HEAD_BYTES": "8192", "MACHADO_MAX_HEADERS": "50"})
    yield base, proc
    proc.terminate()
    proc.wait(30)


def raw_answer(base: str, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Sends ``request`` as it is and reads the answer to the end of the connection."""
    with connect(base) as connection:
        with contextlib.suppress(OSError):  # refused before all was sent: the answer is there
            connection.sendall(request)
        data = b""
        while chunk := connection.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
    return int(lines[0].split()[1]), headers, body


MALFORMED = [
    b"GARBAGE\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n",
    b"POST /tokenize HTTP/1.1\r\nHost: x\r\nContent-Length: ten\r\n\r\n",
    b"GET /\x00 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    b"\r\n\r\n\r\n",
]


@pytest.mark.parametrize("request_bytes", MALFORMED)
def test_malformed_request_is_a_json_400(server, request_bytes):
    """Whatever the parser refuses is answered in the one error shape, never plain text."""
    base, _ = server
    status, headers, body = raw_answer(base, request_bytes)
    assert status == 400, (status, body)
    assert headers["content-type"] == "application/json"
    assert headers["x-content-type-options"] == "nosniff"
    assert json.loads(body)["error"]["type"] == "bad_request"


@pytest.mark.parametrize(
    "headers",
    [
        [("X-Big", "a" * 100_000)],  # arrives whole: HeadGuard
        [(f"X-H{i}", "1") for i in range(5000)],
        [("X-Big", "a" * 1_000_000)],  # too large to arrive whole: h11's limit
        [(f"X-H{i}", "1") for i in range(60)],  # small, but more headers than allowed
    ],
)
def test_request_head_over_the_limit_is_a_json_431(server, headers):
    base, _ = server
    head = "GET /health HTTP/1.1\r\nHost: x\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers)
    status, answer_headers, body = raw_answer(base, head.encode() + b"\r\n")
    assert status == 431, (status, body[:200])
    assert answer_headers["content-type"] == "application/json"
    assert json.loads(body)["error"]["type"] == "request_head_too_large"


def test_refused_heads_are_counted(server):
    base, _ = server
    raw_answer(base, b"GARBAGE\r\n\r\n")
    assert metric(base, 'machado_connections_closed_total{reason="bad_request"}') >= 1
