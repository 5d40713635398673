"""A request's Deadline: its time limit and its client's hang-up, read between graph calls."""

from __future__ import annotations

import threading
import time

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.deadline import CLIENT_CLOSED, Deadline
from service.errors import APIError
from tests.service.conftest import make_settings


def test_deadline_passes_while_time_is_left_and_the_client_is_there():
    Deadline(60.0).check()


def test_deadline_after_its_time_is_504_naming_the_limit():
    deadline = Deadline(0.01)
    time.sleep(0.02)
    with pytest.raises(APIError) as caught:
        deadline.check()
    assert (caught.value.status, caught.value.type) == (504, "timeout")
    assert "0.01 s" in caught.value.message, caught.value.message


def test_deadline_once_the_client_hung_up_is_499_even_past_its_time():
    """A client that left is why the work stops, whatever the clock says."""
    hung_up = threading.Event()
    deadline = Deadline(0.01, hung_up)
    deadline.check()
    hung_up.set()
    time.sleep(0.02)
    with pytest.raises(APIError) as caught:
        deadline.check()
    assert (caught.value.status, caught.value.type) == (CLIENT_CLOSED, "client_closed_request")


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
