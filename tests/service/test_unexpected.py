"""An unexpected failure (a bug, ONNX Runtime failing a graph call) is answered in the one error
shape with the request's id, logged with its traceback under that id, and counted as an error of
the A/B arm it happened in; the service goes on serving."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from tests.service.conftest import make_settings


class BrokenSession:
    """An ONNX Runtime session whose every graph call fails, as a failing runtime's would."""

    def __init__(self, session) -> None:
        self.session = session

    def run(self, *args, **kwargs):
        raise RuntimeError("graph call failed")

    def __getattr__(self, name):
        return getattr(self.session, name)


class Records(logging.Handler):
    """The records of one logger, whatever handlers and propagation other tests configured."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def errors_log():
    handler, logger = Records(), logging.getLogger("service.errors")
    logger.addHandler(handler)
    try:
        yield handler.records
    finally:
        logger.removeHandler(handler)


@pytest.fixture(scope="module")
def broken_bengio():
    """The service with the Bengio model's graph failing, as the only A/B arm."""
    settings = make_settings(ab_weights="bengio=100")
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        model = client.app.state.models["bengio"]
        healthy, model.session = model.session, BrokenSession(model.session)
        try:
            yield client
        finally:
            model.session = healthy


PLAIN = [
    ("/generate", {"model": "ab", "prompt": "Capitu", "max_new_tokens": 4}),
    ("/next-token", {"model": "ab", "prompt": "Capitu"}),
    ("/score", {"model": "ab", "text": "Capitu olhou para mim."}),
    ("/v1/completions", {"model": "ab", "prompt": "Capitu", "max_tokens": 4}),
    ("/compare", {"models": ["bengio"], "prompt": "Capitu", "max_new_tokens": 4}),
]


def arm_figures(client) -> tuple[int, int, int]:
    arm = client.get("/ab").json()["arms"].get("bengio", {})
    return arm.get("requests", 0), arm.get("errors", 0), arm.get("abandoned", 0)


@pytest.mark.parametrize(("path", "body"), PLAIN, ids=[p for p, _ in PLAIN])
def test_unexpected_failure_is_a_500_with_the_request_id_logged_and_counted(
    broken_bengio, errors_log, path, body
):
    """The 500 carries X-Request-Id and X-Model like every other answer, its message names the
    id, the log has the traceback under that id, and the arm counts one error."""
    before = arm_figures(broken_bengio)
    response = broken_bengio.post(path, json=body, headers={"X-Request-Id": "req-unexpected-1"})
    assert response.status_code == 500, response.text
    error = response.json()["error"]
    assert error["type"] == "internal_error", error
    assert error["message"] == (
        "unexpected RuntimeError; the server logged it under request id req-unexpected-1"
    )
    assert response.headers["x-request-id"] == "req-unexpected-1"
    assert response.headers["x-model"] == "bengio"
    [record] = errors_log
    assert record.request_id == "req-unexpected-1"
    assert record.exc_info and "graph call failed" in str(record.exc_info[1])
    assert f"POST {path} failed: RuntimeError" in record.getMessage()
    if body.get("model") == "ab":
        requests, errors, abandoned = arm_figures(broken_bengio)
        assert (requests, errors, abandoned) == (before[0] + 1, before[1] + 1, before[2])


STREAMED = [
    ("/generate", {"model": "ab", "prompt": "Capitu", "max_new_tokens": 4, "stream": True}),
    ("/v1/completions", {"model": "ab", "prompt": "Capitu", "max_tokens": 4, "stream": True}),
]


@pytest.mark.parametrize(("path", "body"), STREAMED, ids=[p for p, _ in STREAMED])
def test_unexpected_failure_in_a_stream_ends_it_on_an_error_logged_and_counted(
    broken_bengio, errors_log, path, body
):
    """A stream that fails once started ends on an error event (or chunk) in the one error
    shape, the log has the traceback under the request's id, and the arm counts an error, not a
    request abandoned by its client."""
    before = arm_figures(broken_bengio)
    with broken_bengio.stream(
        "POST", path, json=body, headers={"X-Request-Id": "req-unexpected-2"}
    ) as response:
        assert response.status_code == 200
        assert response.headers["x-request-id"] == "req-unexpected-2"
        assert response.headers["x-model"] == "bengio"
        lines = [line for line in response.iter_lines() if line.startswith("data:")]
    last = json.loads(lines[-1].removeprefix("data:"))
    assert last == {
        "error": {
            "type": "internal_error",
            "message": "unexpected RuntimeError; the server logged it under request id "
            "req-unexpected-2",
            "field": None,
        }
    }
    [record] = errors_log
    assert record.request_id == "req-unexpected-2"
    assert record.exc_info and "graph call failed" in str(record.exc_info[1])
    requests, errors, abandoned = arm_figures(broken_bengio)
    assert (requests, errors, abandoned) == (before[0] + 1, before[1] + 1, before[2])


def test_service_serves_on_after_unexpected_failures(broken_bengio):
    """The failures held no slot: every other model answers, and the in-flight count is 0."""
    for _ in range(3):
        broken_bengio.post("/next-token", json={"model": "bengio", "prompt": "Capitu"})
    assert broken_bengio.app.state.admission.running == 0
    response = broken_bengio.post("/next-token", json={"model": "attention", "prompt": "Capitu"})
    assert response.status_code == 200, response.text


class NaNSession(BrokenSession):
    """A session that runs and answers NaN everywhere, as damaged weights can."""

    def run(self, *args, **kwargs):
        return [np.full_like(output, np.nan) for output in self.session.run(*args, **kwargs)]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/generate", {"model": "bengio", "prompt": "Capitu", "max_new_tokens": 4}),
        ("/next-token", {"model": "bengio", "prompt": "Capitu"}),
        ("/score", {"model": "bengio", "text": "Capitu olhou para mim."}),
    ],
)
def test_model_answering_nan_is_a_500_not_nonsense(errors_log, path, body):
    """A model whose logits are NaN gets no token drawn and no NaN reported: a 500, logged."""
    with TestClient(create_app(make_settings()), raise_server_exceptions=False) as client:
        model = client.app.state.models["bengio"]
        model.session = NaNSession(model.session)
        response = client.post(path, json=body)
    assert response.status_code == 500, response.text
    assert response.json()["error"]["message"].startswith("unexpected NonFiniteLogits;")
    [record] = errors_log
    assert "rows of logits hold NaN or infinity" in record.getMessage()


def test_unexpected_failure_has_its_access_log_line(caplog):
    """The request that failed unexpectedly is logged and counted like every other (the
    middleware that answers its 500 must not fail itself on the way out)."""
    with TestClient(create_app(make_settings()), raise_server_exceptions=True) as client:
        model = client.app.state.models["bengio"]
        model.session = BrokenSession(model.session)
        with caplog.at_level(logging.INFO, logger="service.access"):
            answer = client.post("/next-token", json={"model": "bengio", "prompt": "Capitu"})
    assert answer.status_code == 500
    lines = [r for r in caplog.records if r.name == "service.access"]
    assert any(getattr(r, "status", None) == 500 for r in lines), [r.message for r in lines]
