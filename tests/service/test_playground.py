"""The playground page in a real headless Chromium (Debian's package), driven by Playwright."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bench.common import start_server

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
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


def _open(browser, base: str, width: int = 1280):
    page = browser.new_page(viewport={"width": width, "height": 1000})
    page.goto(base)
    page.wait_for_selector("#model-choices input", timeout=20_000)
    return page


def _shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)


def test_playground_compare_shows_every_model(browser, server):
    page = _open(browser, server)
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
    _shot(page, "playground-compare.png")
    page.close()


def test_playground_penalties_reach_the_models(browser, server):
    """The penalty fields go with both requests: greedy Bengio repeats itself, and a
    frequency penalty changes what it writes; a value out of range is the API's error."""
    page = _open(browser, server)
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
    page = _open(browser, server)
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


def attributes(page, selector: str, name: str) -> list[str | None]:
    return page.eval_on_selector_all(selector, f"nodes => nodes.map(n => n.getAttribute('{name}'))")


def test_playground_shows_attention_without_a_click(browser, server):
    """The loaded page draws the example prompt's attention: a heatmap labelled by the tokens on
    both axes, the lines view, and a layers x heads grid with its rows and columns named."""
    page = _open(browser, server)
    page.locator("#heatmap .row-label").first.wait_for(timeout=30_000)
    tokens = int(page.locator("#heatmap").get_attribute("data-size"))
    assert tokens == 6  # <|endoftext|> and the five tokens of "Capitu olhou para mim"
    rows = page.locator("#heatmap .row-label").all_text_contents()
    assert rows == page.locator("#heatmap .col-label").all_text_contents()
    assert rows[0] == "<|endoftext|>" and rows[-1] == "␣mim", rows
    assert page.locator("#heatmap rect.cell").count() == tokens * tokens
    assert page.locator("#thumbs .thumb").count() == 36
    heads = page.locator("#thumbs .col-head").all_inner_texts()
    assert heads == [f"head {h}" for h in range(6)], heads
    layers = page.locator("#thumbs .row-head").all_inner_texts()
    assert layers == [f"layer {layer}" for layer in range(6)], layers
    assert page.locator("#lines line").count() > tokens
    assert page.locator("#lines .line-token").count() == 2 * tokens
    assert page.locator("#error").is_hidden()
    _shot(page, "playground-attention.png")
    page.close()


def test_playground_attention_follows_the_prompt_and_the_choices(browser, server):
    page = _open(browser, server)
    page.locator("#heatmap .row-label").first.wait_for(timeout=30_000)
    page.fill("#prompt", "Não tive filhos, não transmiti a nenhuma criatura")
    page.locator("#heatmap .row-label", has_text="criatura").wait_for(timeout=30_000)
    heatmap = page.locator("#heatmap")
    page.select_option("#att-layer", "2")
    page.select_option("#att-head", "3")
    assert (heatmap.get_attribute("data-layer"), heatmap.get_attribute("data-head")) == ("2", "3")
    page.locator("#thumbs .thumb[data-layer='4'][data-head='1']").click()
    assert (heatmap.get_attribute("data-layer"), heatmap.get_attribute("data-head")) == ("4", "1")
    assert page.locator("#thumbs .thumb.selected").get_attribute("aria-pressed") == "true"
    assert page.input_value("#att-layer") == "4" and page.input_value("#att-head") == "1"
    page.select_option("#att-model", "attention-seed")
    page.locator("#heatmap[data-size='4']").wait_for(timeout=30_000)
    assert page.locator("#thumbs .thumb").count() == 1
    assert "last 4 tokens" in page.locator("#att-status").inner_text()
    page.close()


def test_playground_heatmap_hover_outlines_and_keeps_the_weights(browser, server):
    """Hovering a cell outlines its row and column and names the pair and its weight; every
    cell keeps its colour. The arrow keys move the same outline."""
    page = _open(browser, server)
    page.locator("#heatmap .row-label").first.wait_for(timeout=30_000)
    fills = page.eval_on_selector_all(
        "#heatmap rect.cell", "cells => cells.map(c => c.getAttribute('fill'))"
    )
    page.locator("#heatmap rect.cell[data-q='4'][data-k='2']").hover()
    outlines = page.locator("#heatmap rect.outline[visibility='visible']")
    assert outlines.count() == 2
    assert page.locator("#heatmap rect.outline").first.get_attribute("fill") is None
    readout = page.locator("#heatmap-readout").inner_text()
    assert readout.startswith("query 4 “␣para” reads key 2 “pitu”: 0."), readout
    after = page.eval_on_selector_all(
        "#heatmap rect.cell", "cells => cells.map(c => c.getAttribute('fill'))"
    )
    assert after == fills
    page.locator("#heatmap").focus()
    page.keyboard.press("ArrowLeft")
    assert page.locator("#heatmap-readout").inner_text().startswith("query 4 “␣para” reads key 1")
    page.keyboard.press("ArrowUp")
    assert page.locator("#heatmap-readout").inner_text().startswith("query 3 ")
    page.close()


def test_playground_lines_view_hover_and_head_toggles(browser, server):
    """The lines view: a colour per head; hovering a query keeps only its lines, all of them
    from that query and to keys up to it; a head switched off takes its lines away."""
    page = _open(browser, server)
    page.locator("#lines line").first.wait_for(state="attached", timeout=30_000)
    count = lambda selector: page.locator(selector).count()  # noqa: E731
    total = count("#lines line")
    colours = set(
        page.eval_on_selector_all("#lines line", "ls => ls.map(l => l.getAttribute('stroke'))")
    )
    assert len(colours) == 6, colours
    page.locator("#lines .line-token[data-side='query'][data-i='3']").hover()
    visible = page.eval_on_selector_all(
        "#lines line",
        "ls => ls.filter(l => getComputedStyle(l).visibility === 'visible')"
        ".map(l => [l.dataset.q, Number(l.dataset.k)])",
    )
    assert visible and all(q == "3" and k <= 3 for q, k in visible), visible
    page.mouse.move(0, 0)
    page.locator("#line-heads input[value='0']").uncheck()
    assert 0 < count("#lines line") < total
    assert count("#lines line[data-head='0']") == 0
    page.close()


def test_playground_where_the_models_differ(browser, server):
    """The prompt coloured token by token by which of two models found it easier, with the
    totals; a token shows the two models' next-token distributions side by side."""
    import httpx

    page = _open(browser, server)
    page.select_option("#diff-a", "attention")
    page.select_option("#diff-b", "attention-seed")
    page.locator("#diff-totals", has_text="attention-seed:").wait_for(timeout=30_000)
    tokens = page.locator("#diff-text .diff-token")
    assert tokens.count() == 5
    bits = {}
    for model in ("attention", "attention-seed"):
        answer = httpx.post(
            f"{server}/v1/completions",
            json={
                "model": model,
                "prompt": "Capitu olhou para mim",
                "max_tokens": 0,
                "echo": True,
                "logprobs": 5,
            },
            timeout=30,
        ).json()["choices"][0]["logprobs"]["token_logprobs"]
        bits[model] = [-lp / 0.6931471805599453 for lp in answer]
    totals = page.locator("#diff-totals").inner_text()
    assert f"attention: {sum(bits['attention']):.1f} bits" in totals, totals
    assert f"attention-seed: {sum(bits['attention-seed']):.1f} bits" in totals, totals
    gaps = [float(tokens.nth(i).get_attribute("data-gap")) for i in range(5)]
    expected = [b - a for a, b in zip(bits["attention"], bits["attention-seed"], strict=True)]
    assert all(abs(g - e) < 1e-3 for g, e in zip(gaps, expected, strict=True)), (gaps, expected)
    colours = [tokens.nth(i).evaluate("t => getComputedStyle(t).backgroundColor") for i in range(5)]
    assert len(set(colours)) > 1, colours
    tokens.nth(2).click()
    dists = page.locator("#diff-token .dist")
    assert dists.count() == 2
    assert (
        "attention:" in dists.nth(0).inner_text() and "attention-seed:" in dists.nth(1).inner_text()
    )
    for i in range(2):
        assert dists.nth(i).locator(".bar").count() >= 5
        assert dists.nth(i).locator(".bar.actual").count() == 1
    assert "token 2" in page.locator("#diff-token").inner_text()
    tokens.nth(1).focus()
    page.keyboard.press("Enter")
    assert "token 1" in page.locator("#diff-token").inner_text()
    _shot(page, "playground-differ.png")
    page.close()


def test_playground_loops_and_matrices_agree(browser, server):
    """The seed model's head computed by the page's loops beside the service's matrix
    products: the same weights, and the page says by how little they differ."""
    page = _open(browser, server)
    verdict = page.locator("#lesson-difference")
    verdict.wait_for(timeout=30_000)
    page.locator("#lesson-difference[data-difference]").wait_for(timeout=30_000)
    assert page.input_value("#lesson-model") == "attention-seed"
    assert float(verdict.get_attribute("data-difference")) < 1e-5
    assert "the same weights" in verdict.inner_text()
    assert (
        page.locator("#loop-map rect.cell").count()
        == page.locator("#matrix-map rect.cell").count()
        == 16
    )
    page.click("#lesson summary")
    assert "Math.sqrt(headDim)" in page.locator("#loop-code").inner_text()
    page.select_option("#lesson-model", "attention")
    page.select_option("#lesson-layer", "3")
    page.select_option("#lesson-head", "5")
    page.locator("#lesson-difference", has_text="layer 3, head 5").wait_for(timeout=30_000)
    assert float(verdict.get_attribute("data-difference")) < 1e-5
    _shot(page, "playground-lesson.png")
    page.close()


def test_playground_says_what_greedy_does_and_warns_of_loops(browser, server):
    """Temperature 0 brings a note saying what it does; a completion that loops is flagged with
    its share of repeated 4-grams."""
    page = _open(browser, server)
    assert page.locator("#temperature-note").is_hidden()
    page.fill("#temperature", "0")
    assert page.locator("#temperature-note").is_visible()
    assert "greedy" in page.locator("#temperature-note").inner_text()
    for box in page.locator("#model-choices input").all():
        if box.get_attribute("value") != "bengio":
            box.uncheck()
    page.fill("#prompt", "Não tive filhos, não transmiti")
    page.fill("#max-new-tokens", "64")
    page.click("#compare")
    warning = page.locator("#col-bengio .repeats")
    warning.wait_for(timeout=60_000)
    assert "temperature 0" in warning.inner_text() and "%" in warning.inner_text()
    page.fill("#temperature", "1")
    assert page.locator("#temperature-note").is_hidden()
    page.close()


def test_playground_shows_api_errors(browser, server):
    page = _open(browser, server)
    page.fill("#prompt", "   ")
    page.click("#compare")
    error = page.locator("#error")
    error.wait_for(state="visible", timeout=20_000)
    assert "prompt" in error.inner_text()
    _shot(page, "playground-error.png")
    page.close()


def test_playground_model_cards(browser, server):
    page = _open(browser, server)
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
    page = _open(browser, server, width=375)
    page.locator("#heatmap .row-label").first.wait_for(timeout=30_000)
    page.locator("#diff-text .diff-token").first.wait_for(timeout=30_000)
    page.locator("#lesson-difference[data-difference]").wait_for(timeout=30_000)
    page.locator("#diff-text .diff-token").nth(1).click()
    overflow = page.evaluate("document.scrollingElement.scrollWidth")
    assert overflow <= 376, overflow
    _shot(page, "playground-phone.png")
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
    page = _open(browser, server)
    page.click("#refresh-experiment")
    page.locator("#experiment-verdicts li").first.wait_for(timeout=20_000)
    rows = page.locator("#experiment-arms tr")
    assert rows.count() == 4, rows.all_inner_texts()  # a header and the three arms
    text = page.locator("#experiment").inner_text()
    assert "(reference)" in text and " to " in text, text
    assert "attention" in page.locator("#experiment-verdicts").inner_text()
    _shot(page, "playground-experiment.png")
    page.close()


# WCAG's contrast ratio of an element's text on the background it is painted on.
CONTRAST = """n => {
  const lum = (css) => {
    const [r, g, b] = css.match(/[\\d.]+/g).slice(0, 3).map(Number).map((v) => {
      v /= 255;
      return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4;
    });
    return 0.2126 * r + 0.7152 * g + 0.0722 * b;
  };
  let back = n;  // the nearest box with a background of its own paints behind the text
  while (back && /rgba\\(.*, 0\\)$/.test(getComputedStyle(back).backgroundColor)) {
    back = back.parentElement;
  }
  const under = back ? getComputedStyle(back).backgroundColor : "rgb(255, 255, 255)";
  const [a, b] = [lum(getComputedStyle(n).color), lum(under)].sort((x, y) => y - x);
  return (a + 0.05) / (b + 0.05);
}"""


def test_playground_is_labelled_and_readable(browser, server):
    """Every control has a label a screen reader reads, the views' buttons are reachable by
    keyboard, and coloured text keeps WCAG AA contrast (4.5:1)."""
    page = _open(browser, server)
    page.locator("#diff-text .diff-token").first.wait_for(timeout=30_000)
    page.locator("#thumbs .thumb").first.wait_for(timeout=30_000)
    unlabelled = page.evaluate(
        """() => [...document.querySelectorAll('input, select, textarea, button')]
          .filter((c) => !c.labels?.length && !c.getAttribute('aria-label')
                         && !c.textContent.trim())
          .map((c) => c.outerHTML.slice(0, 80))"""
    )
    assert unlabelled == [], unlabelled
    page.fill("#temperature", "0")
    for selector in ("#diff-text .diff-token", "#temperature-note", ".hint", ".meta"):
        for ratio in page.eval_on_selector_all(selector, f"ns => ns.map({CONTRAST})"):
            assert ratio >= 4.5, (selector, ratio)
    page.locator("#thumbs .thumb").first.focus()
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.getAttribute('aria-label')") == "layer 0, head 1"
    page.keyboard.press("Enter")
    assert page.locator("#heatmap").get_attribute("data-head") == "1"
    page.close()
