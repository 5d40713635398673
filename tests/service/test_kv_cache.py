"""Generation with the key/value cache graph (decoder.onnx) against full windows."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.engine import Engine
from runtime.kv_cache import CachedContext
from runtime.loader import MIN_CACHE_CONTEXT, load_models
from runtime.results import GenerationRequest
from runtime.sampling import SamplingParams
from tests.service.conftest import MODELS, make_options, make_settings

PROMPT = "Não tive filhos, não transmiti a nenhuma criatura o legado da nossa miséria. "


@pytest.fixture(scope="module")
def loaded():
    return load_models(make_options(kv_cache=True)), load_models(make_options(kv_cache=False))


@pytest.fixture(scope="module")
def engines(loaded):
    cached, plain = loaded
    return Engine(cached["attention"]), Engine(plain["attention"])


def test_cache_graph_loads_only_when_asked_and_worth_it(loaded):
    cached, plain = loaded
    assert cached["attention"].decoder_session is not None
    assert plain["attention"].decoder_session is None
    # context 4: below MIN_CACHE_CONTEXT, the graph is not loaded (nor paid for in memory)
    assert "decoder.onnx" in cached["attention-seed"].card["graphs"]
    assert cached["attention-seed"].decoder_session is None
    assert cached["bengio"].decoder_session is None


def test_sessions_keep_no_memory_pattern_per_shape(loaded):
    """Every graph's session runs without ONNX Runtime's memory pattern planner (it holds memory
    for each input shape it has met, and the service's shapes change at every call; see
    benchmarks/memory-cpu.json), with the threads it was given, spinning 50 us at most when idle."""
    sessions = [
        session
        for models in loaded
        for model in models.values()
        for session in (model.session, model.attention_session, model.decoder_session)
        if session is not None
    ]
    assert len(sessions) >= 6
    for session in sessions:
        options = session.get_session_options()
        assert options.enable_mem_pattern is False
        assert options.enable_cpu_mem_arena is True  # off costs 14-15 % of the time
        assert options.intra_op_num_threads == make_settings().threads
        # idle threads spin briefly, then sleep: long spins take the cores of the next session
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == "1"
        assert options.get_session_config_entry("session.intra_op.spin_duration_us") == "50"


@pytest.mark.slow
@pytest.mark.parametrize(
    "spin_us, allow, duration", [(-1, "1", ""), (0, "0", ""), (50, "1", "50"), (400, "1", "400")]
)
def test_thread_spin_setting_reaches_every_session(spin_us, allow, duration):
    """-1: ONNX Runtime's own spinning (no duration given); 0: no spinning; N: N microseconds."""
    models = load_models(make_options(thread_spin_us=spin_us))
    sessions = [m.session for m in models.values()] + [
        m.decoder_session for m in models.values() if m.decoder_session is not None
    ]
    assert len(sessions) >= 4
    for session in sessions:
        options = session.get_session_options()
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == allow
        key = "session.intra_op.spin_duration_us"
        if duration:
            assert options.get_session_config_entry(key) == duration
        else:  # not set: ONNX Runtime's own spin loop, or none
            with pytest.raises(RuntimeError, match="does not have"):
                options.get_session_config_entry(key)


def test_cached_generation_equals_full_windows_within_the_context(engines):
    """Prompt and new tokens inside the context: the same greedy tokens, the same logprobs."""
    cached, plain = engines
    runs = [
        list(engine.generate(GenerationRequest(PROMPT, 60, seed=0, logprobs=3)))[-1]
        for engine in (cached, plain)
    ]
    assert [s.id for s in runs[0].steps] == [s.id for s in runs[1].steps]
    assert len(runs[0].steps) == 60
    for a, b in zip(runs[0].steps, runs[1].steps, strict=True):
        assert abs(a.logprob - b.logprob) < 1e-4
    assert runs[0].text == runs[1].text


@pytest.mark.slow
def test_cache_past_the_context_restarts_at_three_quarters(engines):
    """Past the context each step's logits are the full-window logits of the window the cache
    holds: all of the context at first, then 3/4 of it growing back to all of it."""
    cached, plain = engines
    context = cached.context
    cache = CachedContext(cached.model.decoder_session, context)
    rng = np.random.default_rng(0)
    ids = [cached.eot, *cached.encode(PROMPT * 40)][: context + 20]
    start = len(ids) - context  # the reference window: ids[start:]
    restarts = 0
    for _ in range(context // 4 + 10):  # restarts at once, then again 64 tokens later
        got = cache.next_logits(ids)
        expected = plain._logits(
            np.asarray(ids[start:])[None], np.asarray([[len(ids) - start - 1]])
        )[0, 0]
        assert np.abs(got - expected).max() < 1e-3, (len(ids), start)
        ids.append(int(rng.integers(0, cached.vocab_size)))
        if len(ids) - start > context:
            start = len(ids) - cache.refill
            restarts += 1
    assert restarts == 2
    assert cache.refill == context * 3 // 4


def test_cache_is_fresh_for_every_generation(engines):
    """Two generations in a row, and interleaved: each one its own cache."""
    cached, _ = engines
    params = SamplingParams(temperature=0.0)
    first = list(cached.generate(GenerationRequest(PROMPT, 20, params, seed=0)))[-1].text
    other = cached.generate(GenerationRequest("Capitu", 20, params, seed=0))
    again = cached.generate(GenerationRequest(PROMPT, 20, params, seed=0))
    next(other)
    assert list(again)[-1].text == first


def test_models_endpoint_says_which_models_use_the_cache(client):
    models = {m["name"]: m for m in client.get("/models").json()["models"]}
    assert models["attention"]["kv_cache"] is True
    assert models["attention-seed"]["kv_cache"] is False  # context 4: the cache does not pay
    assert models["bengio"]["kv_cache"] is False


@given(
    prompt=st.lists(st.integers(1, 8191), min_size=1, max_size=20),
    steps=st.lists(st.integers(1, 8191), min_size=1, max_size=24),
)
@settings(max_examples=40, deadline=None)
def test_cache_window_policy_on_a_short_context(seed_sessions, prompt, steps):
    """attention-seed (context 4, restart at 3) crosses its context every few tokens: at every
    step the cached logits are the full-window logits of the window the policy says it holds."""
    decoder, full, context = seed_sessions
    cache = CachedContext(decoder, context)
    ids = list(prompt)
    start = max(0, len(ids) - context)
    for token in [None, *steps]:
        if token is not None:
            ids.append(token)
            if len(ids) - start > context:
                start = len(ids) - cache.refill
        window = np.asarray(ids[start:])[None]
        expected = full.run(
            ["logits"], {"input_ids": window, "positions": np.asarray([[window.shape[1] - 1]])}
        )[0][0, 0]
        assert np.abs(cache.next_logits(ids) - expected).max() < 1e-4


@pytest.fixture(scope="module")
def seed_sessions():
    """The seed model's cache graph, opened directly (the service skips it: its context is
    under MIN_CACHE_CONTEXT), its full graph, and its context."""
    import onnxruntime as ort

    folder = MODELS / "attention-seed"
    context = json.loads((folder / "card.json").read_text())["context"]
    assert context < MIN_CACHE_CONTEXT
    decoder, full = (
        ort.InferenceSession(str(folder / name), providers=["CPUExecutionProvider"])
        for name in ("decoder.onnx", "model.onnx")
    )
    return decoder, full, context


def test_a_broken_cache_graph_leaves_the_model_serving(tmp_path, caplog):
    """decoder.onnx unreadable: the model loads, generates without the cache, and the log
    says why."""
    import shutil

    shutil.copytree(MODELS / "attention", tmp_path / "attention")
    shutil.copy(MODELS / "tokenizer.json", tmp_path / "tokenizer.json")
    (tmp_path / "attention" / "decoder.onnx").write_bytes(b"not a graph")
    with caplog.at_level("WARNING", logger="runtime.loader"):
        model = load_models(make_options(models_dir=tmp_path))["attention"]
    assert model.ready and model.decoder_session is None
    assert "key/value cache graph did not load" in caplog.text
    steps = list(Engine(model).generate(GenerationRequest(PROMPT, 5, seed=0)))
    assert len(steps[-1].steps) == 5
