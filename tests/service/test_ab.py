"""A/B routing: sticky per client, split by weight, named in body and header; /ab figures."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from service.ab import parse_weights, pick_arm, report
from service.app import create_app
from tests.service.conftest import every_slot_taken, make_settings


@pytest.fixture(scope="module")
def ab_client():
    settings = make_settings(ab_weights="attention-seed=70,bengio=30")
    with TestClient(create_app(settings)) as client:
        yield client


def test_ab_same_client_same_arm(ab_client):
    """Fifty requests from one client id all land on one arm, named in body and header."""
    arms = set()
    for _ in range(50):
        r = ab_client.post(
            "/next-token",
            json={"model": "ab", "prompt": "Capitu", "top_k": 1},
            headers={"X-Client-Id": "reader-42"},
        )
        assert r.status_code == 200
        assert r.headers["x-model"] == r.json()["model"]
        arms.add(r.json()["model"])
    assert len(arms) == 1 and arms <= {"attention-seed", "bengio"}


def test_ab_split_follows_weights_within_five_points():
    weights = parse_weights("attention-seed=70,bengio=30", ["attention-seed", "bengio"])
    picks = [pick_arm(weights, f"client-{i}") for i in range(10_000)]
    share = picks.count("attention-seed") / len(picks)
    assert abs(share - 0.70) < 0.05, share


def test_ab_split_through_the_api(ab_client):
    arms = [
        ab_client.post(
            "/score", json={"model": "ab", "text": "A vida é"}, headers={"X-Client-Id": f"c{i}"}
        ).json()["model"]
        for i in range(200)
    ]
    share = arms.count("attention-seed") / len(arms)
    assert abs(share - 0.70) < 0.10, share


def test_ab_without_client_id_is_random(ab_client):
    arms = {
        ab_client.post("/next-token", json={"model": "ab", "prompt": "a", "top_k": 1}).json()[
            "model"
        ]
        for _ in range(40)
    }
    assert arms == {"attention-seed", "bengio"}


def test_ab_generate_and_stats(ab_client):
    r = ab_client.post(
        "/generate",
        json={"model": "ab", "prompt": "Capitu", "max_new_tokens": 3, "temperature": 0},
        headers={"X-Client-Id": "stats"},
    )
    assert r.status_code == 200 and r.headers["x-model"] == r.json()["model"]
    stats = ab_client.get("/ab").json()
    assert stats["weights"] == {"attention-seed": 0.7, "bengio": 0.3}
    arm = stats["arms"][r.json()["model"]]
    assert arm["requests"] >= 1 and arm["tokens_generated"] >= 3
    assert arm["latency_ms"]["p50"] > 0 and arm["latency_ms"]["p99"] >= arm["latency_ms"]["p50"]
    scored = [a for a in stats["arms"].values() if a["texts_scored"]]
    assert scored and all(0 < a["mean_bits_per_character"] < 10 for a in scored)
    metrics = ab_client.get("/metrics").text
    assert "machado_ab_requests_total" in metrics and "machado_ab_bits_per_character" in metrics


@pytest.mark.parametrize("stream", [False, True])
def test_ab_openai_completions_count_in_the_stats(ab_client, stream):
    """/v1/completions through the experiment: the arm in the X-Model header, and its
    requests and tokens in /ab and in /metrics' token counter."""

    def arm_figures(name: str) -> tuple[int, int]:
        arm = ab_client.get("/ab").json()["arms"].get(name, {})
        return arm.get("requests", 0), arm.get("tokens_generated", 0)

    def tokens_metric(name: str) -> float:
        for line in ab_client.get("/metrics").text.splitlines():
            if line.startswith(f'machado_generated_tokens_total{{model="{name}"}}'):
                return float(line.split()[-1])
        return 0.0

    body = {"model": "ab", "prompt": "Capitu", "max_tokens": 3, "temperature": 0}
    headers = {"X-Client-Id": "completions-stats"}
    probe = {"model": "ab", "prompt": "a", "top_k": 1}
    name = ab_client.post("/next-token", json=probe, headers=headers).json()["model"]
    before, metric_before = arm_figures(name), tokens_metric(name)
    if stream:
        with ab_client.stream(
            "POST", "/v1/completions", json={**body, "stream": True}, headers=headers
        ) as response:
            assert response.headers["x-model"] == name
            chunks = [line for line in response.iter_lines() if line.startswith("data:")]
        made = len(chunks) - 2  # the token chunks: not the finish chunk, not [DONE]
    else:
        response = ab_client.post("/v1/completions", json=body, headers=headers)
        assert response.status_code == 200, response.text
        assert response.headers["x-model"] == response.json()["model"] == name
        made = response.json()["usage"]["completion_tokens"]
    requests, tokens = arm_figures(name)
    assert (requests, tokens) == (before[0] + 1, before[1] + made) and made > 0
    assert tokens_metric(name) == metric_before + made


LONG = "Capitu olhou para mim com os olhos de ressaca. " * 30  # ~1,500 characters


@pytest.mark.slow
@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/generate", {"prompt": "Capitu", "max_new_tokens": 32}),
        ("/next-token", {"prompt": LONG}),
        ("/score", {"text": LONG}),
        ("/v1/completions", {"prompt": "Capitu", "max_tokens": 32}),
        ("/v1/completions", {"prompt": "Capitu", "max_tokens": 32, "stream": True}),
    ],
)
def test_ab_request_that_fails_is_its_arms_error(path, body):
    """A request through the experiment that runs out of time counts as its arm's error, apart
    from the arm's answered requests; streamed, it ends on an error chunk."""
    settings = make_settings(ab_weights="attention=100", request_timeout_s=0.001)
    with TestClient(create_app(settings)) as client:
        response = client.post(path, json={"model": "ab", **body})
        if body.get("stream"):
            chunks = [line for line in response.iter_lines() if line.startswith("data:")]
            assert response.status_code == 200 and '"timeout"' in chunks[-1], chunks[-3:]
        else:
            assert response.status_code == 504, response.text
            assert response.json()["error"]["type"] == "timeout"
        assert response.headers["x-model"] == "attention"
        arm = client.get("/ab").json()["arms"]["attention"]
    assert (arm["requests"], arm["errors"], arm["abandoned"]) == (1, 1, 0), arm


def test_ab_request_turned_away_names_its_arm_but_is_not_its_error():
    """A 429 (every slot taken) after the arm was picked names the arm, and is no fault of it."""
    settings = make_settings(ab_weights="bengio=100", max_concurrency=1)
    with TestClient(create_app(settings)) as client:
        with every_slot_taken(client):
            response = client.post("/next-token", json={"model": "ab", "prompt": "Capitu"})
        assert response.status_code == 429 and response.headers["x-model"] == "bengio"
        assert client.get("/ab").json()["arms"].get("bengio", {}).get("errors", 0) == 0


def test_ab_not_offered_on_attention(ab_client):
    r = ab_client.post("/attention", json={"model": "ab", "prompt": "a"})
    assert r.status_code == 404 and r.json()["error"]["type"] == "model_not_found"


def test_ab_bad_weights_turn_the_experiment_off():
    with TestClient(create_app(make_settings(ab_weights="gpt=100"))) as client:
        r = client.post("/next-token", json={"model": "ab", "prompt": "a"})
        assert r.status_code == 503 and "gpt" in r.json()["error"]["message"]
        assert client.get("/ab").json()["error"]


@pytest.mark.parametrize("text", ["attention", "attention=-1", "attention=0", "attention=x"])
def test_ab_weight_parsing_errors(text):
    with pytest.raises(ValueError):
        parse_weights(text, ["attention"])


def test_ab_report_counts_an_abandoned_request_apart():
    """A request whose client left is counted, but neither as an error nor in the latencies."""
    row = {"arm": "bengio", "bpc": None, "reward": None, "latency_ms": 200.0, "tokens": 4}
    rows = [
        {**row, "outcome": "ok"},
        {**row, "outcome": "abandoned", "latency_ms": None, "tokens": 2},
    ]
    arm = report(rows, ["bengio"], "bengio", 0.05)["arms"]["bengio"]
    assert (arm["requests"], arm["errors"], arm["abandoned"]) == (2, 0, 1), arm
    assert arm["tokens_generated"] == 6 and arm["latency_ms"]["p99"] == pytest.approx(200), arm
