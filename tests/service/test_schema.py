"""Schemathesis over the OpenAPI schema: no 5xx, no response outside the schema."""

from __future__ import annotations

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings

from service.app import create_app
from tests.service.conftest import make_settings

pytestmark = pytest.mark.slow  # real weights on a real port, training runs, or a browser

# Small limits keep every generated request quick; the lifespan loads the models once.
APP = create_app(
    make_settings(
        max_new_tokens=8,
        max_score_chars=2000,
        max_prompt_chars=500,
        max_body_bytes=1_048_576,
        max_attention_tokens=16,
    )
)
_CLIENT = TestClient(APP)
_CLIENT.__enter__()

schema = schemathesis.openapi.from_asgi("/openapi.json", APP)


@schema.parametrize()
@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_schema_no_server_errors_and_conforming_responses(case):
    case.call_and_validate()
