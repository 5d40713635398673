"""Several completions of one prompt as one batch (`n` of /v1/completions): each choice is the
completion `generate` makes alone with its seed."""

from __future__ import annotations

import json

import numpy as np
import pytest

from runtime.engine import Engine, Generation, Step
from runtime.kv_cache import CachedContext
from runtime.loader import load_models
from runtime.results import GenerationRequest
from runtime.sampling import SamplingParams
from tests.service.conftest import make_options

PROMPT = "Não tive filhos, não transmiti a nenhuma criatura o legado da nossa miséria. "
SHIPPED = ("attention", "attention-seed", "bengio")


@pytest.fixture(scope="module")
def engines():
    return {name: Engine(model) for name, model in load_models(make_options()).items()}


def _alone(engine: Engine, seed: int, **options) -> Generation:
    *_, final = engine.generate(GenerationRequest(PROMPT, seed=seed, **options))
    return final


def _together(engine: Engine, seeds: list[int], **options):
    steps: dict[int, list[Step]] = {k: [] for k in range(len(seeds))}
    finals: dict[int, Generation] = {}
    for choice, item in engine.generate_many(GenerationRequest(PROMPT, **options), seeds):
        assert choice not in finals, "a choice went on after it ended"
        if isinstance(item, Generation):
            finals[choice] = item
        else:
            steps[choice].append(item)
    assert sorted(finals) == list(range(len(seeds)))
    return steps, finals


def _same(a: Generation, b: Generation) -> None:
    assert [s.id for s in a.steps] == [s.id for s in b.steps]
    assert a.text == b.text and a.finish_reason == b.finish_reason
    for x, y in zip(a.steps, b.steps, strict=True):
        assert abs(x.logprob - y.logprob) < 1e-4


@pytest.mark.parametrize("name", SHIPPED)
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_each_choice_is_what_generate_makes_with_its_seed(engines, name, temperature):
    engine = engines[name]
    options = dict(
        max_new_tokens=40,
        sampling=SamplingParams(temperature=temperature, top_p=0.95),
        logprobs=2,
    )
    seeds = [11, 12, 13, 14]
    steps, finals = _together(engine, seeds, **options)
    for k, seed in enumerate(seeds):
        alone = _alone(engine, seed, **options)
        _same(finals[k], alone)
        assert [s.id for s in steps[k]] == [s.id for s in alone.steps]  # streamed as they came
        assert [s.top for s in finals[k].steps] != [] and len(finals[k].steps[0].top) == 2
    if temperature > 0:  # different seeds, different completions
        assert len({finals[k].text for k in finals}) > 1


@pytest.mark.parametrize("name", ["attention", "bengio"])
def test_choices_that_end_early_leave_the_batch(engines, name):
    """With a stop string that sampling meets at different steps, each choice ends on its own
    step with its own reason, and the others go on unchanged (the cache drops its rows)."""
    engine = engines[name]
    options = dict(max_new_tokens=30, sampling=SamplingParams(temperature=1.0), stop=(",",))
    seeds = list(range(8))
    _, finals = _together(engine, seeds, **options)
    lengths = {len(finals[k].steps) for k in finals}
    assert len(lengths) > 1, "every choice ended on the same step: the test proves nothing"
    assert "stop" in {finals[k].finish_reason for k in finals}
    for k, seed in enumerate(seeds):
        _same(finals[k], _alone(engine, seed, **options))


def test_cache_rows_past_the_context_match_single_rows(engines):
    """Rows restart at 3/4 of the context together; each row's logits stay its own."""
    engine = engines["attention"]
    context = engine.context
    rng = np.random.default_rng(0)
    rows = [
        [engine.eot, *rng.integers(0, engine.vocab_size, size=context - 3).tolist()]
        for _ in range(3)
    ]
    batch = CachedContext(engine.model.decoder_session, context)
    singles = [CachedContext(engine.model.decoder_session, context) for _ in rows]
    for step in range(12):
        got = batch.next_logits_rows(rows)
        for row, cache in zip(rows, singles, strict=True):
            expected = cache.next_logits(row)
            assert np.abs(got[rows.index(row)] - expected).max() < 1e-3, step
        if step == 5:  # the middle row ends: the batch keeps rows 0 and 2
            batch.keep([0, 2])
            rows, singles = [rows[0], rows[2]], [singles[0], singles[2]]
        for row in rows:
            row.append(int(rng.integers(0, engine.vocab_size)))
    assert batch.cached < context  # it went past the context and restarted


def test_cache_rows_of_different_lengths_are_refused(engines):
    cache = CachedContext(engines["attention"].model.decoder_session, 256)
    with pytest.raises(ValueError, match="one length"):
        cache.next_logits_rows([[1, 2, 3], [1, 2]])


def test_openai_n_choices_match_single_requests(client):
    """Over HTTP: the n choices of one request are the requests with n=1 and seeds seed + k,
    whether streamed or not."""
    body = {"model": "attention", "prompt": "A vida", "max_tokens": 12, "temperature": 1.0}
    several = client.post("/v1/completions", json={**body, "n": 3, "seed": 7}).json()
    texts = {c["index"]: c["text"] for c in several["choices"]}
    tokens = 0
    for k in range(3):
        one = client.post("/v1/completions", json={**body, "seed": 7 + k}).json()
        assert one["choices"][0]["text"] == texts[k]
        tokens += one["usage"]["completion_tokens"]
    assert several["usage"]["completion_tokens"] == tokens
    streamed: dict[int, str] = {0: "", 1: "", 2: ""}
    finished = set()
    stream = {**body, "n": 3, "seed": 7, "stream": True}
    with client.stream("POST", "/v1/completions", json=stream) as response:
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            for choice in json.loads(line[6:])["choices"]:
                streamed[choice["index"]] += choice["text"]
                if choice["finish_reason"]:
                    finished.add(choice["index"])
    assert streamed == texts and finished == {0, 1, 2}
