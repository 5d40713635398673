"""A request's Deadline: its time limit and its client's hang-up, read between graph calls."""

from __future__ import annotations

import threading
import time

import pytest
from fastapi.testclient import TestClient

from runtime.deadline import Deadline, Drain
from runtime.errors import (
    Cancelled,
    HeadNotFound,
    InferenceError,
    LayerNotFound,
    NoAttention,
    ShuttingDown,
    TimedOut,
    TokenNotFound,
)
from service.app import create_app
from service.errors import CLIENT_CLOSED, STATUS, api_error
from tests.service.conftest import make_settings


def test_deadline_passes_while_time_is_left_and_the_client_is_there():
    Deadline(60.0).check()


def test_deadline_after_its_time_is_timed_out_naming_the_limit():
    deadline = Deadline(0.01)
    time.sleep(0.02)
    with pytest.raises(TimedOut) as caught:
        deadline.check()
    assert "0.01 s" in caught.value.message, caught.value.message


def test_deadline_once_the_client_hung_up_is_cancelled_even_past_its_time():
    """A client that left is why the work stops, whatever the clock says."""
    hung_up = threading.Event()
    deadline = Deadline(0.01, hung_up)
    deadline.check()
    hung_up.set()
    time.sleep(0.02)
    with pytest.raises(Cancelled):
        deadline.check()


def test_deadline_past_the_drain_is_shutting_down():
    drain = Drain()
    drain.begin(0.0)
    with pytest.raises(ShuttingDown) as caught:
        Deadline(60.0, drain=drain).check()
    assert "drain time of 0 s" in caught.value.message, caught.value.message


@pytest.mark.parametrize(
    ("error", "status", "type_"),
    [
        (TimedOut(2.0), 504, "timeout"),
        (Cancelled("gone"), CLIENT_CLOSED, "client_closed_request"),
        (ShuttingDown("bye"), 503, "shutting_down"),
        (NoAttention("none", "model"), 422, "no_attention"),
        (LayerNotFound("no layer", "layer"), 404, "layer_not_found"),
        (HeadNotFound("no head", "head"), 404, "head_not_found"),
        (TokenNotFound("no token", "logit_bias"), 404, "token_not_found"),
    ],
)
def test_each_runtime_error_has_its_http_status(error, status, type_):
    """The service answers the core's refusals through one table, message and field kept."""
    mapped = api_error(error)
    assert (mapped.status, mapped.type) == (status, type_)
    assert (mapped.message, mapped.field) == (error.message, error.field)
    if isinstance(error, ShuttingDown):
        assert mapped.headers == {"Retry-After": "1"}


def test_every_runtime_error_class_is_mapped():
    """A new refusal of the core falls back to its nearest mapped base class, never to a 500."""

    class Unforeseen(LayerNotFound):
        pass

    assert api_error(Unforeseen("x")).status == 404
    assert api_error(InferenceError("x")).status == 422
    assert all(issubclass(k, InferenceError) for k in STATUS)


def test_route_failure_passes_the_body_guard_as_it_came(monkeypatch):
    """An unexpected error in a route with a body reaches the one error handler as itself (a
    500 naming it), not wrapped by the task group that watches for the client hanging up."""
    with TestClient(create_app(make_settings()), raise_server_exceptions=False) as client:

        def broken(*args, **kwargs):
            raise RuntimeError("boom")

        monkeypatch.setattr(client.app.state.engines["bengio"], "next_token", broken)
        response = client.post("/next-token", json={"model": "bengio", "prompt": "a"})
    assert response.status_code == 500, response.text
    error = response.json()["error"]
    assert (error["type"], error["field"]) == ("internal_error", None), error
    assert error["message"].startswith("unexpected RuntimeError;"), error
