"""The playground page in a real headless Chromium (Debian's package), driven by Playwright:
comparing the models, errors, cards, the experiment, its security policy and the docs pages."""

from __future__ import annotations

import pytest

from bench.common import start_server
from tests.browser.helpers import BROWSER_TESTS, DOCS_HOST, open_page, shot

pytestmark = BROWSER_TESTS


def test_playground_compare_shows_every_model(browser, server):
    page = open_page(browser, server)
    assert page.locator("#model-choices input").count() == 3
    page.fill("#prompt", "Capitu olhou para mim")
    page.fill("#max-new-tokens", "24")
    page.click("#compare")
    for name in ("attention", "attention-seed", "bengio"):
        column = page.locator(f"#col-{name}")
        column.locator(".status", has_text="tokens").wait_for(timeout=60_000)
        assert column.locator(".generated").inner_text().strip(), name
        assert column.locator(".bar").count() == 8
        spans = column.locator(".surprisal span")
        assert spans.count() >= 4
        assert all(spans.nth(i).get_attribute("style") for i in range(spans.count()))
    assert page.locator("#error").is_hidden()
    shot(page, "playground-compare.png")
    page.close()


def test_playground_penalties_reach_the_models(browser, server):
    """The penalty fields go with both requests: greedy Bengio repeats itself, and a
    frequency penalty changes what it writes; a value out of range is the API's error."""
    page = open_page(browser, server)
    page.fill("#prompt", "Não tive filhos, não transmiti")
    page.fill("#max-new-tokens", "30")
    page.fill("#temperature", "0")
    for box in page.locator("#model-choices input").all():
        if box.get_attribute("value") != "bengio":
            box.uncheck()
    texts = []
    for penalty in ("0", "1.5"):
        page.fill("#frequency-penalty", penalty)
        page.click("#compare")
        column = page.locator("#col-bengio")
        column.locator(".status", has_text="tokens").wait_for(timeout=60_000)
        column.locator(".bar").first.wait_for(timeout=60_000)
        texts.append(column.locator(".generated").inner_text())
    assert texts[0] != texts[1], texts
    page.fill("#frequency-penalty", "5")
    page.click("#compare")
    page.locator("#error").wait_for(state="visible", timeout=30_000)
    assert "frequency_penalty" in page.locator("#error").inner_text()
    page.close()


def test_playground_surprisal_window_reaches_compare(browser, server):
    """Reading 1 token, the prompt surprises the attention model more than reading it all."""
    page = open_page(browser, server)
    page.fill("#prompt", "Não tive filhos, não transmiti a nenhuma criatura o legado")
    page.fill("#max-new-tokens", "2")
    for box in page.locator("#model-choices input").all():
        if box.get_attribute("value") != "attention":
            box.uncheck()
    totals = {}
    for value, reads in (("", "the whole context"), ("1", "1 token")):
        page.select_option("#surprisal-window", value)
        page.click("#compare")
        line = page.locator("#col-attention .surprisal .meta", has_text=f"reading {reads}:")
        line.wait_for(timeout=60_000)
        totals[reads] = float(line.inner_text().split(": ")[1].split(" bits")[0])
    assert totals["1 token"] > totals["the whole context"], totals
    assert page.locator("#error").is_hidden()
    page.close()


def test_playground_shows_api_errors(browser, server):
    page = open_page(browser, server)
    page.fill("#prompt", "   ")
    page.click("#compare")
    error = page.locator("#error")
    error.wait_for(state="visible", timeout=20_000)
    assert "prompt" in error.inner_text()
    shot(page, "playground-error.png")
    page.close()


def test_playground_model_cards(browser, server):
    page = open_page(browser, server)
    card = page.locator("#card-attention")
    text = card.inner_text()
    assert "test BPC / PPL" in text and "13.89 M" in text and "NVIDIA H100" in text
    assert "key/value cache" in text
    assert "weights\tfloat32" in text  # the served default, MACHADO_QUANTIZE=none
    assert "files\tsizes and sha256 as the card records them, checked at load" in text
    assert "full window per token" in page.locator("#card-bengio").inner_text()
    page.click("a[href='#cards']")
    page.close()


def test_playground_phone_width(browser, server):
    page = open_page(browser, server, width=375)
    page.locator("#heatmap .row-label").first.wait_for(timeout=30_000)
    page.locator("#diff-text .diff-token").first.wait_for(timeout=30_000)
    page.locator("#lesson-difference[data-difference]").wait_for(timeout=30_000)
    page.locator("#diff-text .diff-token").nth(1).click()
    overflow = page.evaluate("document.scrollingElement.scrollWidth")
    assert overflow <= 376, overflow
    shot(page, "playground-phone.png")
    page.close()


def _requests_seen(page, base: str, allowed: tuple[str, ...] = ()) -> tuple[list[str], list[str]]:
    """(requests that left the server, responses that failed) of ``page`` from now on; ``allowed``
    URLs may leave."""

    def seen(request) -> None:
        url = request.url
        if not url.startswith((base, f"blob:{base}", *allowed)):  # blob: made by the page itself
            outside.append(url)

    outside, failed = [], []
    page.on("request", seen)
    page.on("response", lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    return outside, failed


def test_playground_works_under_its_content_security_policy(browser, server):
    """The page's policy lets it do all it does (compare, the attention view and thumbnails, the
    cards) and it refuses nothing: no violation reported."""
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    refused = []
    page.on("console", lambda m: refused.append(m.text) if "Content Security" in m.text else None)
    page.goto(server)
    page.wait_for_selector("#model-choices input", timeout=20_000)
    response = page.request.get(server)
    assert "default-src 'none'" in response.headers["content-security-policy"]
    assert response.headers["x-content-type-options"] == "nosniff"
    page.evaluate(
        "document.addEventListener('securitypolicyviolation', e => "
        "(window.violations = window.violations || []).push(e.violatedDirective))"
    )
    page.fill("#prompt", "Capitu olhou para mim")
    page.fill("#max-new-tokens", "8")
    page.click("#compare")
    page.locator("#col-attention .status", has_text="tokens").wait_for(timeout=60_000)
    page.locator("#thumbs canvas").first.wait_for(timeout=30_000)
    page.locator("#diff-text .diff-token").first.wait_for(timeout=30_000)
    page.locator("#lesson-difference[data-difference]").wait_for(timeout=30_000)
    page.locator("#cards table").first.wait_for(timeout=10_000)
    assert page.evaluate("window.violations || []") == [] and not refused, refused
    page.close()


def test_playground_loads_everything_from_the_server(browser, server):
    """The page, its script, style and icon come from the service, and none of them fails."""
    page = browser.new_page()
    outside, failed = _requests_seen(page, server)
    page.goto(server)
    page.wait_for_selector("#model-choices input", timeout=20_000)
    page.wait_for_load_state("networkidle")
    assert not outside and not failed, (outside, failed)
    # Headless Chromium asks for no icon; a browser would ask for the page's (or /favicon.ico).
    icon = page.request.get(server + page.get_attribute("link[rel=icon]", "href"))
    assert icon.status == 200 and icon.headers["content-type"] == "image/svg+xml", icon.status
    page.close()


# ReDoc's "API docs by Redocly" footer shows its logo from Redocly's CDN, whatever the page says:
# the docs pages' policy refuses it, and ReDoc leaves the picture out.
REDOC_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"


@pytest.mark.parametrize(("path", "shows"), [("/docs", ".opblock"), ("/redoc", ".api-content")])
def test_docs_pages_render_with_no_internet(browser, server, path, shows):
    """Swagger UI and ReDoc render the API from scripts the service serves (FastAPI's own pages
    load them from a CDN, and stay blank on a machine without internet, as this one), and ask
    nothing of any other site: Redocly's logo is refused by the page's policy, the one thing it
    refuses."""
    base = server.replace("127.0.0.1", DOCS_HOST)
    page = browser.new_page()
    outside, failed = _requests_seen(page, base)
    refused = []  # by the policy: never sent
    page.on(
        "requestfailed",
        lambda r: refused.append(r.url) if "csp" in (r.failure or "").lower() else None,
    )
    page.add_init_script(
        "document.addEventListener('securitypolicyviolation', e => "
        "(window.violations = window.violations || []).push([e.violatedDirective, e.blockedURI]))"
    )
    response = page.goto(f"{base}{path}")
    assert "default-src 'none'" in response.headers["content-security-policy"]
    page.wait_for_selector(shows, timeout=30_000)
    assert page.get_by_text("/v1/completions").count() > 0
    page.wait_for_load_state("networkidle")
    violations = page.evaluate("window.violations || []")
    expected = [REDOC_LOGO] if path == "/redoc" else []
    assert violations == [["img-src", url] for url in expected], violations
    assert outside == refused == expected and not failed, (outside, refused, failed)
    page.close()


def test_docs_try_it_out_calls_the_server_under_the_policy(browser, server):
    """Swagger UI's "Try it out" sends its request and shows the answer: the policy lets the page
    call this server."""
    page = browser.new_page()
    page.goto(f"{server.replace('127.0.0.1', DOCS_HOST)}/docs")
    tokenize = page.locator(
        ".opblock", has=page.locator(".opblock-summary-path", has_text="/tokenize")
    )
    tokenize.locator(".opblock-summary").click()
    tokenize.get_by_role("button", name="Try it out").click()
    tokenize.get_by_role("button", name="Execute").click()
    answer = tokenize.locator(".live-responses-table .response .microlight").first
    answer.wait_for(timeout=15_000)
    assert '"ids"' in answer.inner_text() and '"offsets"' in answer.inner_text()
    page.close()


def test_playground_with_api_key(browser):
    base, proc = start_server({"MACHADO_API_KEY": "s3cret"})
    try:
        page = browser.new_page()
        page.goto(base)
        page.locator("#key-box").wait_for(state="visible", timeout=20_000)
        page.fill("#api-key", "s3cret")
        page.click("#save-key")
        page.wait_for_selector("#model-choices input", timeout=20_000)
        assert page.locator("#model-choices input").count() == 3
        assert page.evaluate("sessionStorage.getItem('machado-api-key')") == "s3cret"
        page.close()
    finally:
        proc.terminate()
        proc.wait(30)


def test_playground_shows_the_experiment_and_its_verdict(browser, server):
    """Rewards sent for requests through model 'ab' appear in the playground: each arm's mean
    reward with its interval, and the verdict in words."""
    import httpx

    for i in range(12):
        answer = httpx.post(
            f"{server}/next-token",
            json={"model": "ab", "prompt": "Capitu", "top_k": 1},
            headers={"X-Client-Id": f"playground-{i}"},
            timeout=30,
        )
        reward = {"request_id": answer.headers["x-request-id"], "reward": i % 3 / 2}
        assert httpx.post(f"{server}/ab/feedback", json=reward, timeout=30).status_code == 200
    page = open_page(browser, server)
    page.click("#refresh-experiment")
    page.locator("#experiment-verdicts li").first.wait_for(timeout=20_000)
    rows = page.locator("#experiment-arms tr")
    assert rows.count() == 4, rows.all_inner_texts()  # a header and the three arms
    text = page.locator("#experiment").inner_text()
    assert "(reference)" in text and " to " in text, text
    assert "attention" in page.locator("#experiment-verdicts").inner_text()
    shot(page, "playground-experiment.png")
    page.close()
