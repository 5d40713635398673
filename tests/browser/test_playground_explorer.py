"""The playground's explorer views in a real headless Chromium: attention (heatmap, lines, the
layers x heads grid), where two models differ, loops against matrices, and help with
generation; keyboard, labels and contrast."""

from __future__ import annotations

from tests.browser.helpers import BROWSER_TESTS, attributes, open_page, shot

pytestmark = BROWSER_TESTS


def test_playground_shows_attention_without_a_click(browser, server):
    """The loaded page draws the example prompt's attention: a heatmap labelled by the tokens on
    both axes, the lines view, and a layers x heads grid with its rows and columns named."""
    page = open_page(browser, server)
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
    page.locator("#heatmap rect.cell[data-q='5'][data-k='3']").hover()
    shot(page, "playground-attention.png", "#attention-view")
    page.close()


def test_playground_attention_follows_the_prompt_and_the_choices(browser, server):
    page = open_page(browser, server)
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
    page = open_page(browser, server)
    page.locator("#heatmap .row-label").first.wait_for(timeout=30_000)
    fills = attributes(page, "#heatmap rect.cell", "fill")
    page.locator("#heatmap rect.cell[data-q='4'][data-k='2']").hover()
    outlines = page.locator("#heatmap rect.outline[visibility='visible']")
    assert outlines.count() == 2
    assert page.locator("#heatmap rect.outline").first.get_attribute("fill") is None
    readout = page.locator("#heatmap-readout").inner_text()
    assert readout.startswith("query 4 “␣para” reads key 2 “pitu”: 0."), readout
    assert attributes(page, "#heatmap rect.cell", "fill") == fills
    page.locator("#heatmap").focus()
    page.keyboard.press("ArrowLeft")
    assert page.locator("#heatmap-readout").inner_text().startswith("query 4 “␣para” reads key 1")
    page.keyboard.press("ArrowUp")
    assert page.locator("#heatmap-readout").inner_text().startswith("query 3 ")
    page.close()


def test_playground_lines_view_hover_and_head_toggles(browser, server):
    """The lines view: a colour per head; hovering a query keeps only its lines, all of them
    from that query and to keys up to it; a head switched off takes its lines away."""
    page = open_page(browser, server)
    page.locator("#lines line").first.wait_for(state="attached", timeout=30_000)
    count = lambda selector: page.locator(selector).count()  # noqa: E731
    total = count("#lines line")
    colours = set(attributes(page, "#lines line", "stroke"))
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

    page = open_page(browser, server)
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
    shot(page, "playground-differ.png", "#differ")
    page.close()


def test_playground_loops_and_matrices_agree(browser, server):
    """The seed model's head computed by the page's loops beside the service's matrix
    products: the same weights, and the page says by how little they differ."""
    page = open_page(browser, server)
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
    shot(page, "playground-lesson.png", "#lesson")
    page.close()


def test_playground_says_what_greedy_does_and_warns_of_loops(browser, server):
    """Temperature 0 brings a note saying what it does; a completion that loops is flagged with
    its share of repeated 4-grams."""
    page = open_page(browser, server)
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
    page = open_page(browser, server)
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
