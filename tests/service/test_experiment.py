"""The A/B experiment's record: rewards, the report from the store, its export, and one record
shared by several service processes (SQLite, and PostgreSQL where a server can be had)."""

from __future__ import annotations

import csv
import io
import random
import time

import httpx
import pytest
from fastapi.testclient import TestClient

from bench.common import start_server
from service.ab_store import Assignment, Store
from service.app import create_app
from tests.service.conftest import error_of, make_settings

PROBE = {"model": "ab", "prompt": "Capitu olhou", "top_k": 1}


@pytest.fixture(scope="module")
def client():
    settings = make_settings(ab_weights="attention=50,bengio=50")
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def served(client, client_id: str) -> tuple[str, str]:
    """(request id, arm) of one /next-token through the experiment."""
    response = client.post("/next-token", json=PROBE, headers={"X-Client-Id": client_id})
    assert response.status_code == 200, response.text
    return response.headers["x-request-id"], response.headers["x-model"]


@pytest.mark.slow
def test_experiment_rewards_favouring_one_arm_give_a_verdict_and_outlive_a_restart(tmp_path):
    """On a real port, 200 requests through the `ab` model, rewards drawn at 0.8 for attention
    and 0.4 for bengio: /ab says attention is ahead, with a small p-value and intervals around
    the rates; a service started again on the same record reports the same."""
    env = {"MACHADO_AB_STORE": f"sqlite:///{tmp_path / 'ab.db'}",
           "MACHADO_AB_WEIGHTS": "attention=50,bengio=50"}  # fmt: skip
    rng = random.Random(3)
    rate = {"attention": 0.8, "bengio": 0.4}
    base, proc = start_server(env)
    try:
        with httpx.Client(base_url=base, timeout=30) as http:
            for i in range(200):
                answer = http.post("/next-token", json=PROBE, headers={"X-Client-Id": f"r{i}"})
                assert answer.status_code == 200, answer.text
                reward = float(rng.random() < rate[answer.headers["x-model"]])
                body = {"request_id": answer.headers["x-request-id"], "reward": reward}
                assert http.post("/ab/feedback", json=body).status_code == 200
            report = http.get("/ab").json()
    finally:
        _stop(proc)
    assert report["reference"] == "attention" and report["store"] == "sqlite"
    arms = report["arms"]
    assert arms["attention"]["reward"]["n"] + arms["bengio"]["reward"]["n"] == 200
    for arm, true_rate in rate.items():
        reward = arms[arm]["reward"]
        assert reward["low"] < true_rate < reward["high"], (arm, reward)
    bengio = report["comparisons"]["bengio"]
    assert bengio["against"] == "attention" and bengio["difference"] < -0.2, bengio
    assert bengio["p_value"] < 0.001 and bengio["test"] == "Welch's t-test, two-sided"
    assert bengio["verdict"].startswith("bengio behind attention by"), bengio["verdict"]
    base, proc = start_server(env)
    try:
        again = httpx.get(f"{base}/ab", params={"reference": "bengio"}, timeout=30).json()
    finally:
        _stop(proc)
    assert again["arms"] == arms  # the record outlived the process
    assert again["comparisons"]["attention"]["verdict"].startswith("attention ahead of bengio")


def test_experiment_feedback_errors(client):
    """404 for an id no arm served (or an answer of another model), 409 for a second reward,
    422 for a reward outside [0, 1] or a malformed id."""
    request_id, _ = served(client, "errors")
    assert client.post("/ab/feedback", json={"request_id": request_id, "reward": 1}).is_success
    error_of(
        client.post("/ab/feedback", json={"request_id": request_id, "reward": 0}),
        409,
        "reward_exists",
        "request_id",
    )
    error_of(
        client.post("/ab/feedback", json={"request_id": "never-served", "reward": 0.5}),
        404,
        "request_not_found",
        "request_id",
    )
    plain = client.post("/next-token", json={**PROBE, "model": "bengio"})
    error_of(
        client.post(
            "/ab/feedback", json={"request_id": plain.headers["x-request-id"], "reward": 1}
        ),
        404,
        "request_not_found",
    )
    for body, field in [
        ({"request_id": request_id, "reward": 1.5}, "reward"),
        ({"request_id": request_id, "reward": -0.1}, "reward"),
        ({"request_id": request_id, "reward": "good"}, "reward"),
        ({"request_id": "a b", "reward": 1}, "request_id"),
        ({"request_id": "x" * 129, "reward": 1}, "request_id"),
        ({"request_id": request_id}, "reward"),
        ({"request_id": request_id, "reward": 1, "extra": 1}, "extra"),
    ]:
        error_of(client.post("/ab/feedback", json=body), 422, "invalid_field", field)


def test_experiment_reward_after_the_window_is_expired():
    settings = make_settings(ab_weights="bengio=100", ab_feedback_window_s=0.05)
    with TestClient(create_app(settings)) as client:
        request_id, _ = served(client, "late")
        time.sleep(0.1)
        error_of(
            client.post("/ab/feedback", json={"request_id": request_id, "reward": 1}),
            404,
            "request_expired",
        )


def test_experiment_export_and_since(client):
    """The record as JSON and CSV, one row per request with its reward; `since` keeps the later
    ones; no prompt is stored unless a setting says so."""
    before = time.time()
    request_id, arm = served(client, "export")
    client.post("/ab/feedback", json={"request_id": request_id, "reward": 0.25})
    rows = client.get("/ab/export", params={"since": before}).json()["rows"]
    assert [r["request_id"] for r in rows] == [request_id]
    row = rows[0]
    assert (row["arm"], row["reward"], row["outcome"], row["endpoint"]) == (
        arm,
        0.25,
        "ok",
        "/next-token",
    )
    assert row["prompt"] is None and row["client"] and "export" not in row["client"]
    text = client.get("/ab/export", params={"format": "csv", "since": before}).text
    [parsed] = list(csv.DictReader(io.StringIO(text)))
    assert parsed["request_id"] == request_id and float(parsed["reward"]) == 0.25
    iso = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(before + 3600))
    assert client.get("/ab", params={"since": iso}).json()["arms"]["attention"]["requests"] == 0
    error_of(client.get("/ab", params={"since": "yesterday"}), 422, "invalid_field", "query.since")
    error_of(client.get("/ab", params={"reference": "gpt"}), 404, "arm_not_found", "reference")


def test_experiment_store_prompts_only_when_asked():
    settings = make_settings(ab_weights="bengio=100", ab_store_prompts=True)
    with TestClient(create_app(settings)) as client:
        served(client, "kept")
        assert client.get("/ab/export").json()["rows"][0]["prompt"] == PROBE["prompt"]


def test_experiment_without_a_store_says_why():
    settings = make_settings(ab_weights="bengio=100", ab_store="mysql://nowhere")
    with TestClient(create_app(settings)) as client:
        assert client.post("/next-token", json=PROBE).status_code == 200  # the service serves
        error = error_of(client.get("/ab"), 503, "not_ready")
        assert "sqlite:///PATH or postgresql://" in error["message"]
        error_of(
            client.post("/ab/feedback", json={"request_id": "a", "reward": 1}), 503, "not_ready"
        )


def test_experiment_store_writes_what_is_queued_on_close(tmp_path):
    """Assignments are written off the request path, and a clean close loses none of them."""
    url = f"sqlite:///{tmp_path / 'ab.db'}"
    store = Store(url)
    for i in range(500):
        store.record(
            Assignment(f"r{i}", "bengio", None, time.time(), "/x", "ok", 1, 1.0, None, None)
        )
    store.close()
    again = Store(url)
    assert len(again.rows()) == 500
    again.close()


def _two_services(url: str):
    env = {"MACHADO_AB_STORE": url, "MACHADO_AB_WEIGHTS": "attention=50,bengio=50"}
    return start_server(env), start_server(env)


def _stop(*procs) -> None:
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=30)


def shared_record(url: str) -> None:
    """Two service processes on one record: a reward sent to the one that did not serve the
    request is taken, once; both report it; and the record outlives both processes."""
    (base_a, proc_a), (base_b, proc_b) = _two_services(url)
    try:
        answer = httpx.post(f"{base_a}/next-token", json=PROBE, timeout=30)
        request_id = answer.headers["x-request-id"]
        reward = {"request_id": request_id, "reward": 1}
        assert httpx.post(f"{base_b}/ab/feedback", json=reward, timeout=30).status_code == 200
        again = httpx.post(f"{base_a}/ab/feedback", json=reward, timeout=30)
        assert again.status_code == 409, again.text
        for base in (base_a, base_b):
            arms = httpx.get(f"{base}/ab", timeout=30).json()["arms"]
            assert sum(arm["reward"]["n"] for arm in arms.values()) == 1, arms
    finally:
        _stop(proc_a, proc_b)
    base_c, proc_c = start_server({"MACHADO_AB_STORE": url})
    try:
        rows = httpx.get(f"{base_c}/ab/export", timeout=30).json()["rows"]
        assert [(r["request_id"], r["reward"]) for r in rows] == [(request_id, 1.0)]
    finally:
        _stop(proc_c)


@pytest.mark.slow
def test_experiment_two_processes_share_one_sqlite_record(tmp_path):
    shared_record(f"sqlite:///{tmp_path / 'shared.db'}")


@pytest.mark.slow
def test_experiment_two_processes_share_one_postgresql_record(postgres_url):
    shared_record(postgres_url)


def test_experiment_postgresql_store_takes_one_reward_per_request(postgres_url):
    store = Store(postgres_url)
    try:
        store.record(
            Assignment("pg-1", "attention", None, time.time(), "/x", "ok", 3, 9.0, 1.5, None)
        )
        assert store.reward("pg-1", 0.5, 3600) == "recorded"
        assert store.reward("pg-1", 0.5, 3600) == "duplicate"
        assert store.reward("pg-unknown", 0.5, 3600) == "unknown"
        [row] = [r for r in store.rows() if r["request_id"] == "pg-1"]
        assert (row["reward"], row["bpc"], row["tokens"]) == (0.5, 1.5, 3)
    finally:
        store.close()


def test_experiment_a_request_id_sent_twice_counts_both_answers(client):
    """A client may send its own X-Request-Id, and send it twice: both answers are recorded,
    and the reward goes to the latest one."""
    headers = {"X-Request-Id": "client-made-1", "X-Client-Id": "twice"}
    arms = [client.post("/next-token", json=PROBE, headers=headers).headers["x-model"]]
    arms.append(client.post("/next-token", json=PROBE, headers=headers).headers["x-model"])
    reward = {"request_id": "client-made-1", "reward": 0.75}
    assert client.post("/ab/feedback", json=reward).status_code == 200
    assert client.post("/ab/feedback", json=reward).status_code == 409
    rows = [
        r for r in client.get("/ab/export").json()["rows"] if r["request_id"] == "client-made-1"
    ]
    assert [r["arm"] for r in rows] == arms
    assert [r["reward"] for r in rows] == [None, 0.75]
