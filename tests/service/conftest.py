"""Service fixtures: the shipped models behind a test client, with small limits."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

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


@pytest.fixture(scope="session")
def client():
    with TestClient(create_app(make_settings())) as test_client:
        yield test_client
