"""What the browser tests share: Debian's Chromium driven by Playwright, a served instance, and
screenshots under artifacts/ (docs/ keeps the README's copies)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# What every browser test module marks itself with.
BROWSER_TESTS = [
    pytest.mark.slow,
    pytest.mark.skipif(
        CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)"
    ),
]
# The server under a name that is not localhost, as a deployed one is: Swagger UI's validator
# badge (in layouts other than FastAPI's) asks a third party about schemas served from elsewhere.
DOCS_HOST = "machado-docs.test"
# The closed network: no background requests, no sandbox as root, no GPU; DOCS_HOST is here.
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    f"--host-resolver-rules=MAP {DOCS_HOST} 127.0.0.1",
]


def open_page(browser, base: str, width: int = 1280):
    page = browser.new_page(viewport={"width": width, "height": 1000})
    page.goto(base)
    page.wait_for_selector("#model-choices input", timeout=20_000)
    return page


def shot(page, name: str, panel: str | None = None) -> None:
    """The page (or one panel of it) as artifacts/NAME; docs/ keeps the README's copies."""
    ARTIFACTS.mkdir(exist_ok=True)
    if panel:
        page.locator(panel).screenshot(path=str(ARTIFACTS / name))
    else:
        page.screenshot(path=str(ARTIFACTS / name), full_page=True)


def attributes(page, selector: str, name: str) -> list[str | None]:
    """Attribute ``name`` of every element ``selector`` matches, in document order."""
    return page.eval_on_selector_all(selector, f"nodes => nodes.map(n => n.getAttribute('{name}'))")
