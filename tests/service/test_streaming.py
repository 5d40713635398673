"""Server-sent events from /generate and /v1/completions; a client that leaves stops the work;
/compare; the official openai client against the real server."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from bench.common import start_server
from service.ab import pick_arm
from service.errors import APIError

ROOT = Path(__file__).resolve().parents[2]


def sse_events(lines) -> list[tuple[str, str]]:
    """(event, data) pairs from SSE lines ('message' where no event name is given)."""
    events, name, data = [], "message", []
    for line in lines:
        if line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())
        elif not line.strip() and data:
            events.append((name, "\n".join(data)))
            name, data = "message", []
    if data:
        events.append((name, "\n".join(data)))
    return events


@pytest.fixture(scope="module")
def server():
    base, proc = start_server({"MACHADO_MAX_NEW_TOKENS": "512"})
    yield base
    proc.terminate()
    proc.wait(30)


def test_stream_generate_events(client):
    body = {
        "model": "attention",
        "prompt": "Capitu olhou",
        "max_new_tokens": 6,
        "temperature": 0,
        "stream": True,
    }
    with client.stream("POST", "/generate", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-model"] == "attention"
        events = sse_events(response.iter_lines())
    tokens = [json.loads(d) for e, d in events if e == "token"]
    done = [json.loads(d) for e, d in events if e == "done"]
    assert len(tokens) == 6 and len(done) == 1
    assert done[0]["finish_reason"] == "length" and done[0]["usage"]["completion_tokens"] == 6
    assert "".join(t["text"] for t in tokens) == done[0]["text"]
    plain = client.post("/generate", json={**body, "stream": False}).json()
    assert plain["text"] == done[0]["text"]


def test_stream_error_event_mid_stream():
    from fastapi.testclient import TestClient

    from service.app import create_app
    from tests.service.conftest import make_settings

    with TestClient(create_app(make_settings(request_timeout_s=0.05))) as slow:
        body = {
            "model": "attention",
            "prompt": "Capitu " * 40,
            "max_new_tokens": 32,
            "temperature": 0,
            "stream": True,
        }
        with slow.stream("POST", "/generate", json=body) as response:
            events = sse_events(response.iter_lines())
    errors = [json.loads(d) for e, d in events if e == "error"]
    assert errors and errors[0]["error"]["type"] == "timeout"
    assert not [e for e, _ in events if e == "done"]


def _generated_tokens(base: str) -> float:
    text = httpx.get(f"{base}/metrics").text
    match = re.search(r'machado_generated_tokens_total\{model="attention"\} ([0-9.e+]+)', text)
    return float(match.group(1)) if match else 0.0


def test_stream_disconnect_stops_generation(server):
    """Reading three tokens of 512 and hanging up: the server stops within a few tokens."""
    before = _generated_tokens(server)
    body = {
        "model": "attention",
        "prompt": "Capitu " * 30,
        "max_new_tokens": 512,
        "temperature": 0,
        "stream": True,
    }
    with httpx.stream("POST", f"{server}/generate", json=body, timeout=30) as response:
        seen = 0
        for line in response.iter_lines():
            if line.startswith("event: token"):
                seen += 1
                if seen == 3:
                    break
    time.sleep(1.5)
    first = _generated_tokens(server) - before
    time.sleep(1.0)
    second = _generated_tokens(server) - before
    assert 3 <= first < 100, first  # counted when the stream closed: a handful, not 512
    assert second == first
    slots = re.search(r"machado_in_flight_requests ([0-9.]+)", httpx.get(f"{server}/metrics").text)
    assert float(slots.group(1)) == 0.0


def _server_cpu_seconds(base: str) -> float:
    metrics = httpx.get(f"{base}/metrics").text
    return float(re.search(r"^process_cpu_seconds_total (\S+)", metrics, re.M).group(1))


@pytest.mark.slow
def test_client_that_hangs_up_on_a_long_answer_stops_its_work(server):
    """Not a stream: a client that gives up after 1 s on a /score of about a minute's work frees
    the CPU within a graph call (the request ends as 499), instead of computing on to its time
    limit."""
    text = ("Capitu olhou para mim, e disse que a vida era um sonho. " * 3000)[:150_000]
    with pytest.raises(httpx.TimeoutException):
        httpx.post(f"{server}/score", json={"model": "attention", "text": text}, timeout=1.0)
    time.sleep(1.5)
    before = _server_cpu_seconds(server)
    time.sleep(2.0)
    busy = _server_cpu_seconds(server) - before
    assert busy < 0.5, f"the server spent {busy:.2f} CPU seconds of 2 after the client left"
    metrics = httpx.get(f"{server}/metrics").text
    assert re.search(r'machado_requests_total\{[^}]*route="/score"[^}]*status="499"', metrics)
    assert re.search(r"machado_in_flight_requests 0\.0", metrics)


def _client_id_for(arm: str) -> str:
    """An X-Client-Id that the server's A/B experiment (every model, equal weights) sends to
    ``arm``."""
    weights = {name: 1 / 3 for name in ("attention", "attention-seed", "bengio")}
    return next(f"reader-{i}" for i in range(1000) if pick_arm(weights, f"reader-{i}") == arm)


def _arm(base: str, name: str) -> dict:
    return httpx.get(f"{base}/ab").json()["arms"].get(name, {"requests": 0, "abandoned": 0})


@pytest.mark.parametrize("stream", [False, True])
def test_client_that_hangs_up_is_abandoned_not_an_error_of_its_arm(server, stream):
    """Through the A/B experiment, a request left by its client counts as abandoned: not an
    error of the arm, and its time (to the hang-up) not among the arm's latencies."""
    headers = {"X-Client-Id": _client_id_for("attention")}
    before = _arm(server, "attention")
    if stream:
        body = {"model": "ab", "prompt": "Capitu " * 30, "max_new_tokens": 512, "stream": True}
        with httpx.stream(
            "POST", f"{server}/generate", json=body, headers=headers, timeout=30
        ) as response:
            assert response.headers["x-model"] == "attention"
            next(line for line in response.iter_lines() if line.startswith("event: token"))
    else:
        text = ("Capitu olhou para mim, e disse que a vida era um sonho. " * 3000)[:150_000]
        with pytest.raises(httpx.TimeoutException):
            httpx.post(
                f"{server}/score", json={"model": "ab", "text": text}, headers=headers, timeout=1.0
            )
    for _ in range(50):  # the server hears the hang-up within a graph call
        after = _arm(server, "attention")
        if after["requests"] > before["requests"]:
            break
        time.sleep(0.1)
    assert after["requests"] == before["requests"] + 1, (before, after)
    assert after["abandoned"] == before["abandoned"] + 1, (before, after)
    assert after["errors"] == before.get("errors", 0), (before, after)


@pytest.mark.slow
def test_many_clients_that_hang_up_leave_nothing_behind(tmp_path):
    """Under concurrent load of every endpoint with 40 % of the requests abandoned mid-way
    (python -m bench load --hang-up): no 5xx, no request left in flight, and every model answers
    its probes (greedy /generate, /next-token, /score) exactly as before the load."""
    out = tmp_path / "load.json"
    command = [sys.executable, "-m", "bench", "load", "--clients", "12"]
    command += ["--seconds", "8", "--hang-up", "0.4", "--json", str(out)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert figures["statuses"].get("hung up", 0) > 0, figures["statuses"]
    assert figures["server_499"] > 0, figures["statuses"]
    assert figures["in_flight_after"] == 0 and figures["probes_unchanged"], figures


def test_compare_side_by_side(client):
    body = {
        "prompt": "Não tive filhos, não transmiti",
        "max_new_tokens": 5,
        "temperature": 0.7,
        "seed": 3,
        "top_n": 4,
    }
    result = client.post("/compare", json=body).json()
    models = [r["model"] for r in result["results"]]
    assert models == ["attention", "attention-seed", "bengio"]
    n = len(result["prompt_tokens"])
    assert len(result["least_surprised"]) == n and set(result["least_surprised"]) <= set(models)
    for r in result["results"]:
        assert len(r["surprisal_bits"]) == n and len(r["next_tokens"]) == 4
        assert r["total_surprisal_bits"] == pytest.approx(sum(r["surprisal_bits"]))
        assert r["latency_ms"] > 0 and r["completion"]
    again = client.post("/compare", json=body).json()
    assert [r["completion"] for r in again["results"]] == [
        r["completion"] for r in result["results"]
    ]
    some = client.post("/compare", json={**body, "models": ["bengio", "attention"]}).json()
    assert [r["model"] for r in some["results"]] == ["bengio", "attention"]
    missing = client.post("/compare", json={**body, "models": ["nope"]})
    assert missing.status_code == 404


def test_compare_surprisal_window_is_scores_window(client):
    """The prompt's surprisal with a window is what /score gives with that window; the
    completion and next tokens still read the whole context."""
    prompt = "Não tive filhos, não transmiti a nenhuma criatura o legado da nossa miséria."
    body = {"prompt": prompt, "max_new_tokens": 4, "temperature": 0, "models": ["attention"]}
    whole = client.post("/compare", json=body).json()["results"][0]
    two = client.post("/compare", json={**body, "surprisal_window": 2}).json()["results"][0]
    scored = client.post(
        "/score", json={"model": "attention", "text": prompt, "per_token": True, "window": 2}
    ).json()
    expected = [-t["logprob"] / math.log(2) for t in scored["token_logprobs"]]
    assert two["surprisal_bits"] == pytest.approx(expected, rel=1e-9)
    assert two["total_surprisal_bits"] > whole["total_surprisal_bits"]
    assert two["surprisal_bits"][:2] == pytest.approx(whole["surprisal_bits"][:2], rel=1e-5)
    assert (two["completion"], two["next_tokens"]) == (whole["completion"], whole["next_tokens"])
    zero = client.post("/compare", json={**body, "surprisal_window": 0})
    assert zero.status_code == 422 and zero.json()["error"]["field"] == "surprisal_window"


def test_compare_runs_the_models_at_once(client, monkeypatch):
    """Each model's part runs in a thread of its own, all at once: every model's generation
    waits at a barrier for all the others, which one model after another never passes."""
    engines = client.app.state.engines
    barrier = threading.Barrier(len(engines), timeout=10)
    for engine in engines.values():

        def meet(*args, _generate=engine.generate, **kwargs):
            barrier.wait()
            return _generate(*args, **kwargs)

        monkeypatch.setattr(engine, "generate", meet)
    body = {"prompt": "A vida é", "max_new_tokens": 3, "temperature": 0}
    response = client.post("/compare", json=body)
    assert response.status_code == 200, response.text
    assert [r["model"] for r in response.json()["results"]] == sorted(engines)


def test_compare_answers_with_the_error_of_a_failing_model(client, monkeypatch):
    """One model's error (here its time limit) is the answer, in the service's error shape, and
    the request's slot comes back."""

    def too_late(*args, **kwargs):
        raise APIError(504, "timeout", "the request ran past its time limit")

    monkeypatch.setattr(client.app.state.engines["bengio"], "generate", too_late)
    body = {"prompt": "A vida é", "max_new_tokens": 3, "temperature": 0}
    response = client.post("/compare", json=body)
    assert response.status_code == 504
    assert response.json()["error"]["type"] == "timeout"
    assert client.app.state.admission.running == 0
    fine = client.post("/compare", json={**body, "models": ["attention", "attention-seed"]})
    assert fine.status_code == 200


def test_compare_model_named_twice_422(client):
    """Each model is compared once: a list naming one twice is a 422 saying which."""
    body = {"prompt": "A vida é", "models": ["bengio", "attention", "bengio"]}
    response = client.post("/compare", json=body)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["field"] == "models" and "bengio more than once" in error["message"], error


def test_openai_client_completions(server):
    client = OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0)
    assert {m.id for m in client.models.list()} == {"attention", "attention-seed", "bengio"}
    completion = client.completions.create(
        model="attention", prompt="Capitu olhou", max_tokens=8, temperature=0, logprobs=2
    )
    choice = completion.choices[0]
    assert choice.finish_reason in ("length", "stop") and choice.text
    assert len(choice.logprobs.tokens) == completion.usage.completion_tokens
    assert all(len(top) == 2 for top in choice.logprobs.top_logprobs)
    several = client.completions.create(
        model="bengio", prompt=["A vida", "O amor"], max_tokens=4, n=2, seed=5, temperature=1.0
    )
    assert sorted(c.index for c in several.choices) == [0, 1, 2, 3]
    stopped = client.completions.create(
        model="attention", prompt="Capitu olhou", max_tokens=40, temperature=0, stop=[","]
    )
    assert "," not in stopped.choices[0].text


def test_openai_client_streaming(server):
    client = OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0)
    plain = (
        client.completions.create(
            model="attention", prompt="Capitu olhou", max_tokens=8, temperature=0
        )
        .choices[0]
        .text
    )
    chunks = list(
        client.completions.create(
            model="attention", prompt="Capitu olhou", max_tokens=8, temperature=0, stream=True
        )
    )
    assert "".join(c.choices[0].text for c in chunks) == plain
    assert chunks[-1].choices[0].finish_reason in ("length", "stop")


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (
            "/generate",
            {"model": "attention", "prompt": "Capitu", "max_new_tokens": 32, "stream": True},
        ),
        (
            "/v1/completions",
            {"model": "attention", "prompt": "Capitu", "max_tokens": 32, "stream": True},
        ),
    ],
)
def test_stream_client_gone_before_first_byte_frees_the_slot(client, path, body):
    """A client that disconnects at once never holds a concurrency slot for good."""
    raw = json.dumps(body).encode()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "client": ("127.0.0.1", 1),
        "server": ("testserver", 80),
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(raw)).encode()),
        ],
    }

    async def call() -> None:
        messages = iter([{"type": "http.request", "body": raw, "more_body": False}])

        async def receive():
            return next(messages, {"type": "http.disconnect"})

        async def send(message):
            pass

        await client.app(scope, receive, send)

    client.portal.call(call)
    deadline = time.monotonic() + 10
    while client.app.state.admission.running and time.monotonic() < deadline:
        time.sleep(0.05)
    assert client.app.state.admission.running == 0
