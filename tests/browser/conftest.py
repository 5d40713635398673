"""The browser tests' fixtures: one headless Chromium per module, and a served instance."""

from __future__ import annotations

import pytest

from bench.common import start_server
from tests.browser.helpers import ARGS, CHROMIUM


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def server():
    base, proc = start_server({"MACHADO_MAX_NEW_TOKENS": "64"})
    yield base
    proc.terminate()
    proc.wait(30)
