"""Sampling rules on known logits, and generation on a fake model whose logits are known."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from tokenizers import Tokenizer

from bench.sampling import top_p_by_full_sort
from runtime.engine import Engine
from runtime.loader import LoadedModel
from runtime.results import GenerationRequest
from runtime.sampling import (
    NonFiniteLogits,
    SamplingParams,
    adjust,
    apply_frequency_presence,
    apply_logit_bias,
    apply_repetition_penalty,
    choose,
    draw,
    entropy_bits,
    filter_top_k,
    filter_top_p,
    first_stop,
    log_softmax,
    logsumexp,
)
from tests.service.conftest import MODELS

LOGITS = np.log(np.array([0.5, 0.25, 0.15, 0.1]))


def _draws(params: SamplingParams, n: int = 4000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.bincount([choose(LOGITS, params, [], rng) for _ in range(n)], minlength=4) / n


def test_sampling_greedy_takes_the_argmax():
    rng = np.random.default_rng(0)
    assert all(choose(LOGITS, SamplingParams(temperature=0), [], rng) == 0 for _ in range(20))


def test_sampling_temperature_one_follows_the_distribution():
    freq = _draws(SamplingParams(temperature=1.0))
    assert np.allclose(freq, [0.5, 0.25, 0.15, 0.1], atol=0.03), freq


def test_sampling_low_temperature_sharpens_high_flattens():
    cold, hot = _draws(SamplingParams(temperature=0.3)), _draws(SamplingParams(temperature=5.0))
    assert cold[0] > 0.85 and hot[0] < 0.35, (cold, hot)


def test_sampling_top_k_keeps_only_k():
    freq = _draws(SamplingParams(top_k=2))
    assert freq[2] == 0 and freq[3] == 0
    assert freq[0] == pytest.approx(2 / 3, abs=0.03)
    assert np.isneginf(filter_top_k(LOGITS, 1)[1:]).all()


@given(
    size=st.sampled_from([4, 100, 8192]),
    spread=st.sampled_from([0.01, 1.0, 5.0]),
    ties=st.booleans(),
    masked=st.floats(0.0, 0.9),
    p=st.floats(0.01, 0.999),
    seed=st.integers(0, 2**32 - 1),
)
def test_top_p_on_the_likeliest_tokens_equals_the_full_sort(size, spread, ties, masked, p, seed):
    """Flat and peaked distributions, ties (rounded logits) and -inf (a top-k before it)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, spread, size)
    if ties:
        logits = np.round(logits, 0)
    logits[rng.random(size) < masked] = -np.inf
    logits[rng.integers(size)] = 0.0  # one finite logit at least
    got, expected = filter_top_p(logits, p), top_p_by_full_sort(logits, p)
    assert (np.isfinite(got) == np.isfinite(expected)).all()


def test_draw_is_numpys_choice():
    """Same seed, same draws as Generator.choice: seeded sampling did not change."""
    probs = np.exp(log_softmax(np.random.default_rng(1).normal(0, 3, 8192)))
    a, b = np.random.default_rng(7), np.random.default_rng(7)
    assert [draw(probs, a) for _ in range(500)] == [
        int(b.choice(8192, p=probs)) for _ in range(500)
    ]


def test_sampling_top_p_keeps_the_nucleus():
    """p = 0.7: 0.5 alone is short of it, 0.5 + 0.25 reaches it; the rest is cut."""
    kept = np.isfinite(filter_top_p(LOGITS, 0.7))
    assert kept.tolist() == [True, True, False, False]
    assert np.isfinite(filter_top_p(LOGITS, 0.01)).tolist() == [True, False, False, False]
    assert (_draws(SamplingParams(top_p=0.7))[2:] == 0).all()


def test_sampling_repetition_penalty_discourages_seen_tokens():
    logits = np.array([2.0, -1.0, 1.0])
    out = apply_repetition_penalty(logits, [0, 1], 2.0)
    assert out.tolist() == [1.0, -2.0, 1.0]
    rng = np.random.default_rng(0)
    assert (
        choose(
            np.array([2.0, 1.5]), SamplingParams(temperature=0, repetition_penalty=2.0), [0], rng
        )
        == 1
    )


def test_sampling_frequency_and_presence_penalties_follow_openai():
    """A generated token's logit loses frequency x its count, plus presence once."""
    logits = np.array([1.0, 2.0, 3.0, 4.0])
    out = apply_frequency_presence(logits, [1, 1, 3, 1], frequency=0.5, presence=0.25)
    assert out.tolist() == [1.0, 2.0 - 1.5 - 0.25, 3.0, 4.0 - 0.5 - 0.25]
    assert apply_frequency_presence(logits, [], 0.5, 0.25) is logits
    assert apply_frequency_presence(logits, [1, 2], 0.0, 0.0) is logits


def test_sampling_penalties_count_generated_tokens_not_the_prompt():
    """The prompt (``seen``) meets the repetition penalty only; the frequency and presence
    penalties count what was generated."""
    logits = np.array([3.0, 2.5, 0.0])
    params = SamplingParams(temperature=0, frequency_penalty=1.0)
    rng = np.random.default_rng(0)
    assert choose(logits, params, [0, 0, 0], rng) == 0
    assert choose(logits, params, [0], rng, generated=[0]) == 1
    negative = SamplingParams(temperature=0, presence_penalty=-2.0)  # negative encourages
    assert choose(logits, negative, [], rng, generated=[1]) == 1


def test_sampling_logit_bias_bans_and_forces_tokens():
    """-100 takes a token out of every draw; +100 makes it the only likely one."""
    banned = SamplingParams(temperature=1.0, logit_bias=((0, -100.0),))
    assert _draws(banned)[0] == 0.0
    forced = SamplingParams(temperature=1.0, logit_bias=((3, 100.0),))
    assert _draws(forced)[3] == 1.0
    assert apply_logit_bias(LOGITS, ((1, 2.0), (1, 1.0))).tolist() == pytest.approx(
        [LOGITS[0], LOGITS[1] + 3.0, LOGITS[2], LOGITS[3]]
    )


def test_sampling_adjust_order_bias_then_penalties():
    """Bias first, then the repetition penalty (on the biased logit), then frequency."""
    params = SamplingParams(repetition_penalty=2.0, frequency_penalty=1.0, logit_bias=((0, 2.0),))
    out = adjust(np.array([2.0, 1.0]), params, seen=[0], generated=[0])
    assert out.tolist() == [(2.0 + 2.0) / 2.0 - 1.0, 1.0]


def test_sampling_same_seed_same_choices():
    params = SamplingParams(temperature=1.0)
    runs = []
    for _ in range(2):
        rng = np.random.default_rng(7)
        runs.append([choose(LOGITS, params, [], rng) for _ in range(50)])
    assert runs[0] == runs[1] and len(set(runs[0])) > 1


def test_sampling_log_softmax_and_entropy():
    logp = log_softmax(np.zeros(8))
    assert np.allclose(np.exp(logp).sum(), 1.0)
    assert entropy_bits(logp) == pytest.approx(3.0)
    assert entropy_bits(log_softmax(np.array([0.0, -np.inf]))) == pytest.approx(0.0)


@pytest.mark.parametrize(
    "row", [[0.0, np.nan, 1.0], [0.0, np.inf, 1.0], [-np.inf, -np.inf, -np.inf]], ids=str
)
def test_sampling_log_softmax_refuses_a_row_with_no_probabilities(row):
    """NaN, +inf, or nothing but -inf: no distribution to draw from or report, in any row."""
    logits = np.array([[0.0, 1.0, 2.0], row])
    with pytest.raises(NonFiniteLogits, match="1 of 2 rows of logits hold NaN or infinity"):
        log_softmax(logits)


def test_sampling_first_stop():
    assert first_stop("abc. def", [".", "def"]) == 3
    assert first_stop("abc", ["x"]) == -1


class CountingSession:
    """A fake model: the next token is always (last token + 1) mod V, with probability ~0.9."""

    def __init__(self, vocab: int, end_at: int | None = None) -> None:
        self.vocab, self.end_at, self.calls = vocab, end_at, 0

    def run(self, names, feeds, run_options=None):
        self.calls += 1
        ids, positions = feeds["input_ids"], feeds["positions"]
        last = np.take_along_axis(ids, positions, 1)  # (B, K)
        logits = np.zeros((*last.shape, self.vocab), dtype=np.float32)
        target = (last + 1) % self.vocab
        if self.end_at is not None:
            target = np.where(last == self.end_at, 0, target)
        np.put_along_axis(logits, target[..., None], 5.0, -1)
        return [logits]


def _fake_engine(end_at: int | None = None) -> Engine:
    tokenizer = Tokenizer.from_file(str(MODELS / "tokenizer.json"))
    model = LoadedModel(
        name="fake",
        folder=MODELS / "fake",
        tokenizer=tokenizer,
        provider="CPUExecutionProvider",
        session=CountingSession(tokenizer.get_vocab_size(), end_at),
        card={"context": 4, "kind": "fake", "config": {"vocab_size": tokenizer.get_vocab_size()}},
    )
    return Engine(model)


def _finish(engine: Engine, prompt: str, n: int, **kw):
    if "stop" in kw:
        kw["stop"] = tuple(kw["stop"])
    *steps, final = engine.generate(GenerationRequest(prompt, n, **kw))
    return steps, final


class NaNSession(CountingSession):
    """The fake model broken: NaN in every logit, as damaged weights give."""

    def run(self, names, feeds, run_options=None):
        return [np.full_like(super().run(names, feeds)[0], np.nan)]


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_generate_from_non_finite_logits_fails_instead_of_drawing(temperature):
    """Greedy or sampled, a generation stops at the first broken step, as do /next-token and
    /score: no token drawn from NaN, no NaN log-probability in an answer."""
    engine = _fake_engine()
    engine.model.session = NaNSession(engine.vocab_size)
    with pytest.raises(NonFiniteLogits):
        _finish(engine, "a", 3, sampling=SamplingParams(temperature=temperature), seed=1)
    with pytest.raises(NonFiniteLogits):
        engine.next_token("a", 5)
    with pytest.raises(NonFiniteLogits):
        engine.score("a b c", per_token=False)


def test_generate_greedy_follows_the_known_logits():
    engine = _fake_engine()
    steps, final = _finish(engine, "a", 5)
    start = engine.encode("a")[-1]
    assert [s.id for s in steps] == [start + i for i in range(1, 6)]
    assert final.finish_reason == "length" and final.text == engine.decode([s.id for s in steps])


def test_generate_stops_at_end_of_text():
    engine = _fake_engine()
    start = engine.encode("a")[-1]
    engine.model.session.end_at = start + 2
    _, final = _finish(engine, "a", 10)
    assert final.finish_reason == "end_of_text" and len(final.steps) == 2


def test_generate_stop_string_cuts_the_text():
    engine = _fake_engine()
    _, full = _finish(engine, "a", 6)
    stop = full.text[3:5]
    _, final = _finish(engine, "a", 6, stop=[stop])
    assert final.finish_reason == "stop" and final.text == full.text[: full.text.find(stop)]


def test_generate_slides_the_window_past_the_context():
    """The fake model's context is 4 tokens: every call sees at most 4."""
    engine = _fake_engine()
    seen = []
    original = engine.model.session.run

    def spy(names, feeds, run_options=None):
        seen.append(feeds["input_ids"].shape[1])
        return original(names, feeds, run_options)

    engine.model.session.run = spy
    _, final = _finish(engine, "Capitu olhou para mim", 6)
    assert max(seen) == 4 and final.prompt_truncated and len(final.steps) == 6


def test_generate_same_seed_same_tokens():
    engine = _fake_engine()
    hot = SamplingParams(temperature=3.0)
    a = _finish(engine, "a", 8, sampling=hot, seed=11)[1]
    b = _finish(engine, "a", 8, sampling=hot, seed=11)[1]
    c = _finish(engine, "a", 8, sampling=hot, seed=12)[1]
    assert [s.id for s in a.steps] == [s.id for s in b.steps]
    assert [s.id for s in a.steps] != [s.id for s in c.steps]


def test_generate_reports_logprobs_alternatives():
    engine = _fake_engine()
    steps, _ = _finish(engine, "a", 2, logprobs=3)
    assert len(steps[0].top) == 3 and steps[0].top[0][0] == steps[0].id
    assert steps[0].logprob == pytest.approx(steps[0].top[0][1])


@pytest.mark.parametrize("temperature", [5e-324, 1e-300, 1e-8])
def test_sampling_vanishing_temperature_is_greedy_not_nan(temperature):
    """Found by schemathesis: a denormal temperature once made the probabilities NaN."""
    rng = np.random.default_rng(0)
    params = SamplingParams(temperature=temperature)
    assert all(choose(LOGITS, params, [], rng) == 0 for _ in range(10))


@given(
    st.lists(st.floats(-60.0, 60.0, allow_nan=False, width=32), min_size=2, max_size=300).map(
        lambda xs: np.asarray(xs, dtype=np.float32)
    )
)
def test_sampling_logsumexp_gives_log_softmax_of_a_token(logits):
    """A token's log-probability from logsumexp (float32 exponentials) is float64
    log_softmax's, a row alone or in a batch."""
    exact = log_softmax(logits)
    lse = logsumexp(logits)
    assert np.allclose(logits.astype(np.float64) - lse, exact, atol=1e-5)
    rows = np.stack([logits, logits[::-1]])
    assert np.allclose(logsumexp(rows), [lse, lse], atol=1e-5)


def test_sampling_logsumexp_refuses_broken_rows():
    rows = np.zeros((3, 8), dtype=np.float32)
    rows[1, 2] = np.nan
    with pytest.raises(NonFiniteLogits, match="1 of 3 rows"):
        logsumexp(rows)
    with pytest.raises(NonFiniteLogits):
        logsumexp(np.full(4, -np.inf, dtype=np.float32))
