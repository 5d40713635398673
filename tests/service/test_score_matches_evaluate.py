"""/score over the whole test split agrees with `python -m training evaluate` (the cards)."""

from __future__ import annotations

import json
import math

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from tests.service.conftest import MODELS, make_settings

pytestmark = pytest.mark.slow  # real weights on a real port, training runs, or a browser


@pytest.fixture(scope="module")
def test_documents(real_corpus):
    from training.corpus import read_split

    return read_split(real_corpus, "test")


@pytest.mark.parametrize("name", ["attention", "attention-seed", "bengio"])
def test_score_of_test_split_matches_evaluate(name, test_documents):
    """Summed over the test documents, the API's BPC is the card's within 0.01.

    The card's figure scores one stream (documents joined by end-of-text tokens, those tokens
    predicted too); the API scores each document after an end-of-text token. The difference is
    two end-of-text predictions and a few window edges: far below 0.01 BPC.
    """
    card = json.loads((MODELS / name / "card.json").read_text())
    expected = card["metrics"]["test_float16"]["bits_per_character"]
    settings = make_settings(
        max_score_chars=1_000_000, max_body_bytes=8_000_000, request_timeout_s=600
    )
    nll, chars = 0.0, 0
    with TestClient(create_app(settings)) as client:
        for text in test_documents:
            result = client.post("/score", json={"model": name, "text": text})
            assert result.status_code == 200, result.text
            nll += result.json()["nll_nats"]
            chars += result.json()["characters"]
    bpc = nll / math.log(2) / chars
    assert chars == card["metrics"]["test"]["characters"]
    assert abs(bpc - expected) < 0.01, (name, bpc, expected)
