"""Speculative decoding (runtime.speculation, the scheduler's drafted rounds, SlotCache.verify):
drafts change how many calls a greedy generation takes, never its tokens; sampled generations
are never drafted for. And the incremental detokenizer (runtime.detokenize) that each new token
goes through: the same text as decoding the whole generation."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer

from runtime.detokenize import IncrementalText
from runtime.engine import Engine
from runtime.loader import load_models
from runtime.options import LoadOptions
from runtime.results import GenerationRequest
from runtime.sampling import SamplingParams
from runtime.slots import SlotCache
from runtime.speculation import Drafter

MODELS = Path(__file__).resolve().parents[2] / "models"
GREEDY = SamplingParams(temperature=0.0)
# Prompts whose greedy completions repeat themselves (drafts hold) and one that wanders.
PROMPTS = ["Não tinha filhos, nem filhos", "— Não, não, não", "Capitu olhou"]


@pytest.fixture(scope="module")
def drafting():
    model = load_models(LoadOptions(models_dir=MODELS, kv_slots=2, draft_tokens=6))["attention"]
    return Engine(model, max_batch_rows=2)


@pytest.fixture(scope="module")
def stepping():
    model = load_models(LoadOptions(models_dir=MODELS, kv_slots=2, draft_tokens=0))["attention"]
    return Engine(model, max_batch_rows=2)


def generation(engine: Engine, request: GenerationRequest):
    *_, final = engine.generate(request)
    return final


# The drafter alone --------------------------------------------------------------------------


def test_draft_copies_what_followed_the_latest_earlier_ending():
    drafter = Drafter(3)
    # The ending (8, 9) came twice before: the latest with three tokens after it wins.
    assert drafter.draft([8, 9, 1, 2, 3, 8, 9, 4, 5, 6, 7, 8, 9]) == [4, 5, 6]
    # The ending (7, 8, 9) came before: three tokens match over two.
    assert drafter.draft([7, 8, 9, 1, 1, 1, 8, 9, 2, 2, 2, 7, 8, 9]) == [1, 1, 1]
    # Too few tokens after the latest occurrence: the latest all the same.
    assert drafter.draft([1, 2, 5, 6, 1, 2]) == [5, 6, 1]
    assert drafter.draft([4, 4, 4]) == [4]  # a loop of one token: its overlapping run
    assert drafter.drafted == 3 + 3 + 3 + 1


@pytest.mark.parametrize("context", [[], [5], [1, 2], [1, 2, 3, 4], [3, 1, 2, 3]])
def test_draft_without_an_earlier_ending_guesses_nothing(context):
    assert Drafter(4).draft(context) == []


def test_drafter_needs_a_token_to_draft():
    with pytest.raises(ValueError, match="at least one"):
        Drafter(0)


@given(st.lists(st.integers(0, 5), max_size=60), st.integers(1, 8))
def test_draft_is_what_followed_an_earlier_occurrence(context, tokens):
    guess = Drafter(tokens).draft(context)
    assert len(guess) <= tokens
    if guess:  # some earlier run of 2+ tokens equals the ending and is followed by the guess
        assert any(
            context[i : i + n] == context[-n:] and context[i + n : i + n + len(guess)] == guess
            for n in (3, 2)
            for i in range(len(context) - n)
        )


# Verification: the logits of several tokens in one call ---------------------------------------


def test_verify_gives_each_tokens_logits_as_steps_would(drafting):
    cache = SlotCache(drafting.model.slot_session, 2, drafting.model.card["config"], outputs=5)
    prompt, more = [0, 36, 551, 1651, 77], [2049, 11, 389, 72]
    cache.step([0], [prompt])
    stepped = [cache.step([0], [[t]])[0] for t in more]
    cache.lengths[0] = len(prompt)
    checked = cache.verify(0, more)
    assert checked.shape == (4, cache.vocab_size) and cache.lengths[0] == len(prompt) + 4
    assert np.abs(checked - np.asarray(stepped)).max() < 1e-3
    # Rejected tokens are dropped by setting the length back: the next token sees only the rest.
    cache.lengths[0] = len(prompt) + 1
    again = cache.step([0], [[more[1]]])
    assert np.abs(again[0] - stepped[1]).max() < 1e-3


# Generation ---------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("prompt", PROMPTS)
def test_drafted_greedy_generation_is_the_steps_own(drafting, stepping, prompt):
    request = GenerationRequest(prompt, 48, GREEDY, logprobs=2)
    before = drafting.scheduler.drafter.accepted
    calls = drafting.scheduler.calls
    drafted, stepped = generation(drafting, request), generation(stepping, request)
    assert [s.id for s in drafted.steps] == [s.id for s in stepped.steps]
    assert drafted.text == stepped.text and drafted.finish_reason == stepped.finish_reason
    for a, b in zip(drafted.steps, stepped.steps, strict=True):
        assert abs(a.logprob - b.logprob) < 1e-3
        assert [t for t, _ in a.top] == [t for t, _ in b.top]
    if prompt != "Capitu olhou":  # the repeating ones: fewer calls than tokens
        assert drafting.scheduler.drafter.accepted > before
        assert drafting.scheduler.calls - calls < len(drafted.steps)


@pytest.mark.slow
def test_drafts_stop_where_the_request_says(drafting, stepping):
    """A draft of six tokens never takes a generation past its max_new_tokens or its stop."""
    loop = "Escobar era uma flor, uma flor, uma flor"
    for request in [
        GenerationRequest(loop, 3, GREEDY),
        GenerationRequest(loop, 20, GREEDY, stop=("flor, uma",)),
    ]:
        drafted, stepped = generation(drafting, request), generation(stepping, request)
        assert [s.id for s in drafted.steps] == [s.id for s in stepped.steps]
        assert (drafted.text, drafted.finish_reason) == (stepped.text, stepped.finish_reason)
    assert drafting.scheduler.cache.free == 2


@pytest.mark.slow
def test_drafted_generation_past_the_context_is_the_steps_own(drafting, stepping):
    """A long prompt and long generation: the slot fills and starts again from 3/4 of the
    context, with drafting before and after."""
    prompt = "O Dr. Bacamarte disse que a loucura, a loucura, " * 22
    request = GenerationRequest(prompt, 120, GREEDY)
    drafted, stepped = generation(drafting, request), generation(stepping, request)
    assert len(drafting.prompt_ids(prompt)) + 120 > drafting.context
    assert [s.id for s in drafted.steps] == [s.id for s in stepped.steps]


@pytest.mark.slow
def test_generations_dropped_while_drafted_for_leave_the_loop_sound(drafting, stepping):
    """Requests that hang up at every point of drafted rounds: their slots come back, the loop
    ends, and the next generation is still the steps' own."""
    loop = "Escobar era uma flor, uma flor, uma flor"
    request = GenerationRequest(loop, 40, GREEDY)
    for after in range(1, 12):
        steps = drafting.generate(request)
        for _ in range(after):
            next(steps)
        steps.close()  # the client hung up (the scheduler may be inside a drafted round)
    for _ in range(100):
        if drafting.scheduler._thread is None:
            break
        time.sleep(0.01)
    assert drafting.scheduler._thread is None and drafting.scheduler.cache.free == 2
    drafted, stepped = generation(drafting, request), generation(stepping, request)
    assert [s.id for s in drafted.steps] == [s.id for s in stepped.steps]


@pytest.mark.slow
def test_a_failing_draft_fails_its_request_not_the_loop(drafting, stepping, monkeypatch):
    def broken(context):
        raise RuntimeError("no draft today")

    request = GenerationRequest("Escobar era uma flor, uma flor, uma flor", 12, GREEDY)
    with monkeypatch.context() as patch:
        patch.setattr(drafting.scheduler.drafter, "draft", broken)
        with pytest.raises(RuntimeError, match="no draft today"):
            generation(drafting, request)
    drafted, stepped = generation(drafting, request), generation(stepping, request)
    assert [s.id for s in drafted.steps] == [s.id for s in stepped.steps]


@pytest.mark.slow
def test_only_float32_on_the_cpu_is_drafted_for():
    """int8 quantizes activations: a many-token call's rounding can move a logit by a step of
    the quantizer, so its drafted completions could differ from its own. It has no drafter."""
    options = LoadOptions(models_dir=MODELS, kv_slots=2, draft_tokens=6, quantize="int8")
    model = load_models(options)["attention"]
    assert model.precision == "int8" and model.draft_tokens == 0
    assert Engine(model).scheduler.drafter is None


@pytest.mark.slow
def test_sampled_generations_are_never_drafted_for(drafting, stepping):
    drafter = drafting.scheduler.drafter
    before = drafter.drafted
    request = GenerationRequest("Uma flor, uma flor, uma flor", 24, SamplingParams(), seed=7)
    assert [s.id for s in generation(drafting, request).steps] == [
        s.id for s in generation(stepping, request).steps
    ]
    assert drafter.drafted == before


# The incremental text -----------------------------------------------------------------------

TOKENIZER = Tokenizer.from_file(str(MODELS / "tokenizer.json"))


def decode(ids: list[int]) -> str:
    return TOKENIZER.decode(ids, skip_special_tokens=False)


@settings(max_examples=200)
@given(st.lists(st.integers(0, TOKENIZER.get_vocab_size() - 1), max_size=40))
def test_incremental_text_is_the_whole_decode(ids):
    texts = IncrementalText()
    for n in range(1, len(ids) + 1):
        assert texts.text(ids[:n], decode) == decode(ids[:n])


@given(st.text(alphabet="aáàãâçéêíóõôúü €—«»\n", max_size=40))
def test_incremental_text_of_accented_text(text):
    """Characters of two and three bytes split across tokens come out whole."""
    ids = TOKENIZER.encode(text, add_special_tokens=False).ids
    texts = IncrementalText()
    for n in range(1, len(ids) + 1):
        assert texts.text(ids[:n], decode) == decode(ids[:n])
