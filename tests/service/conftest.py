"""Service fixtures: the shipped models behind a test client, with small limits."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from runtime.options import LoadOptions
from service.app import create_app
from service.settings import Settings

MODELS = Path(__file__).resolve().parents[2] / "models"


def make_settings(**changes) -> Settings:
    fields = dict(
        models_dir=MODELS,
        threads=2,
        max_new_tokens=32,
        max_prompt_chars=2000,
        max_score_chars=5000,
        max_concurrency=4,
        request_timeout_s=20.0,
        max_body_bytes=64_000,
        log_format="text",
    )
    fields.update(changes)
    return Settings(**fields)


def make_options(**changes) -> LoadOptions:
    """How the runtime loads the models under the test settings with ``changes``."""
    return make_settings(**changes).load_options()


def error_of(response, status: int, type_: str, field: str | None = None) -> dict:
    """The error body of ``response``, checked: its status, type, a message, and its field."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["type"] == type_, error
    assert error["message"]
    if field is not None:
        assert error["field"] == field, error
    return error


def context_of(client: TestClient, model: str) -> int:
    """A shipped model's context, as /models reports it (the tests follow the models)."""
    models = {m["name"]: m for m in client.get("/models").json()["models"]}
    return models[model]["context"]


@contextmanager
def every_slot_taken(client: TestClient) -> Iterator[None]:
    """The service as if max_concurrency requests ran and no more might wait: the next
    inference request is turned away."""
    admission = client.app.state.admission
    saved = admission.running, admission.queue
    admission.running, admission.queue = admission.slots, 0
    try:
        yield
    finally:
        admission.running, admission.queue = saved


@pytest.fixture(scope="session")
def client():
    with TestClient(create_app(make_settings())) as test_client:
        yield test_client
