"""The slot scheduler (runtime.scheduler): one loop steps every generation on cache slots; the
tokens are the ones each generation makes alone through decoder.onnx, whatever runs beside it,
and whatever ends a generation gives its slots back."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from runtime.deadline import Deadline
from runtime.engine import Engine
from runtime.errors import Cancelled, TimedOut
from runtime.loader import load_models
from runtime.options import LoadOptions
from runtime.results import Generation, GenerationRequest
from runtime.sampling import SamplingParams
from tests.conftest import concurrently

MODELS = Path(__file__).resolve().parents[2] / "models"
pytestmark = pytest.mark.slow  # the shipped weights, generating in threads
GREEDY = SamplingParams(temperature=0.0)


@pytest.fixture(scope="module")
def slotted():
    return load_models(LoadOptions(models_dir=MODELS, kv_slots=4))["attention"]


@pytest.fixture(scope="module")
def plain():
    return Engine(load_models(LoadOptions(models_dir=MODELS, kv_slots=0))["attention"])


def tokens(engine: Engine, request: GenerationRequest, deadline: Deadline | None = None):
    *_, final = engine.generate(request, deadline)
    return [s.id for s in final.steps]


def idle(engine: Engine) -> bool:
    """The loop has ended (it runs only while there is work) and every slot is free."""
    for _ in range(100):
        if engine.scheduler._thread is None:
            break
        time.sleep(0.01)
    return engine.scheduler._thread is None and engine.scheduler.cache.free == 4


def test_scheduler_more_generations_than_a_step_takes_all_advance(slotted, plain):
    """Four generations, steps of at most two rows: each gets its own tokens, none starves."""
    sizes: list[int] = []
    engine = Engine(slotted, max_batch_rows=2, on_batch=sizes.append)
    prompts = [f"Capítulo {i}. Era uma vez" for i in range(4)]
    requests = [GenerationRequest(p, 24, GREEDY) for p in prompts]
    got = concurrently(lambda r: tokens(engine, r), requests)
    assert got == [tokens(plain, r) for r in requests]
    assert max(sizes) == 2 and sum(sizes) == engine.scheduler.rows
    assert idle(engine)


def test_scheduler_reads_a_long_prompt_in_chunks(slotted, plain):
    """A prompt read a few tokens between steps gives the tokens of one read at once."""
    engine = Engine(slotted, max_batch_rows=4)
    engine.scheduler.token_budget = engine.scheduler.min_prefill = 7
    prompt = "Não tive filhos, não transmiti a nenhuma criatura o legado da nossa miséria. " * 3
    requests = [GenerationRequest(prompt, 40, GREEDY), GenerationRequest("A vida", 40, GREEDY)]
    got = concurrently(lambda r: tokens(engine, r), requests)
    assert got == [tokens(plain, r) for r in requests]
    assert idle(engine)


def test_scheduler_a_failing_choice_fails_its_request_alone(slotted, plain, monkeypatch):
    engine = Engine(slotted, max_batch_rows=4)
    advance = engine._advance

    def broken(choice, logits, request, logp=None):
        if request.prompt == "Capitu" and len(choice.generated) == 3:
            raise RuntimeError("this choice broke")
        return advance(choice, logits, request, logp)

    monkeypatch.setattr(engine, "_advance", broken)
    requests = [GenerationRequest("Capitu", 20, GREEDY), GenerationRequest("A vida", 20, GREEDY)]
    got = concurrently(lambda r: tokens(engine, r), requests)
    assert isinstance(got[0], RuntimeError) and "this choice broke" in str(got[0])
    assert got[1] == tokens(plain, requests[1])
    assert idle(engine)


def test_scheduler_a_failed_step_is_raised_to_its_requests(slotted, monkeypatch):
    engine = Engine(slotted, max_batch_rows=4)
    cache = engine.scheduler.cache

    def failing(slots, tokens):
        raise RuntimeError("the graph call failed")

    monkeypatch.setattr(cache, "step", failing)
    with pytest.raises(RuntimeError, match="the graph call failed"):
        tokens(engine, GenerationRequest("Capitu", 8, GREEDY))
    assert idle(engine)


def test_scheduler_deadline_and_hang_up_stop_the_generation(slotted):
    engine = Engine(slotted, max_batch_rows=4)
    with pytest.raises(TimedOut):
        tokens(engine, GenerationRequest("Capitu", 200, GREEDY), Deadline(1e-9))
    hung_up = threading.Event()
    steps = engine.generate(GenerationRequest("Capitu", 200, GREEDY), Deadline(30, hung_up))
    next(steps)
    hung_up.set()
    with pytest.raises(Cancelled):
        list(steps)
    assert idle(engine)


def test_scheduler_choices_of_one_request_match_their_seeds(slotted, plain):
    """n choices of one prompt: each is what its seed gives alone; they end one by one."""
    engine = Engine(slotted, max_batch_rows=4)
    request = GenerationRequest("Era uma vez", 16, SamplingParams(temperature=1.0), stop=(",",))
    events = list(engine.generate_many(request, [4, 5, 6]))
    got = {c: g.text for c, g in events if isinstance(g, Generation)}
    want = {
        c: g.text for c, g in plain.generate_many(request, [4, 5, 6]) if isinstance(g, Generation)
    }
    assert got == want
    steps = [c for c, g in events if not isinstance(g, Generation)]
    assert sorted(set(steps)) == [0, 1, 2]
    assert idle(engine)


def test_scheduler_logits_of_a_step_are_each_rows_own(slotted):
    """The batch's log-softmax is each row's: a row's log-probabilities in a step of three
    are those it gets alone."""
    engine = Engine(slotted, max_batch_rows=4)
    seen: dict[str, list[float]] = {}
    advance = engine._advance

    def record(choice, logits, request, logp=None):
        step = advance(choice, logits, request, logp)
        if step is not None:
            seen.setdefault(request.prompt, []).append(step.logprob)
        return step

    engine._advance = record
    prompts = ["Capitu", "A vida", "Era uma vez"]
    concurrently(lambda p: tokens(engine, GenerationRequest(p, 12, GREEDY)), prompts)
    together = dict(seen)
    seen.clear()
    for p in prompts:
        tokens(engine, GenerationRequest(p, 12, GREEDY))
    for p in prompts:
        assert np.allclose(together[p], seen[p], atol=1e-4)


def test_scheduler_choices_of_a_long_prompt_read_in_chunks(slotted, plain):
    """n choices of a prompt read in several chunks (after the first, their slots already
    hold tokens): each choice is what its seed gives alone."""
    engine = Engine(slotted, max_batch_rows=4)
    engine.scheduler.token_budget = engine.scheduler.min_prefill = 9
    prompt = "Não tive filhos, não transmiti a nenhuma criatura o legado da nossa miséria."
    request = GenerationRequest(prompt, 12, SamplingParams(temperature=1.0))
    got = {
        c: g.text for c, g in engine.generate_many(request, [1, 2, 3]) if isinstance(g, Generation)
    }
    alone = plain.generate_many(request, [1, 2, 3])
    assert got == {c: g.text for c, g in alone if isinstance(g, Generation)}
    assert idle(engine)
