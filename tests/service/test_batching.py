"""Next-token calls of concurrent requests batched into one graph call (runtime.batching)."""

from __future__ import annotations

import dataclasses
import threading
import time

import numpy as np
import pytest

from runtime.batching import DecodeBatcher, StepBatcher, _Call
from runtime.engine import Engine
from runtime.kv_cache import CachedContext
from runtime.loader import load_models
from runtime.results import GenerationRequest
from runtime.sampling import SamplingParams
from tests.conftest import concurrently
from tests.service.conftest import make_options


class FakeGraph:
    """Logits that name their window: row r's logits are [sum of its window, its length]."""

    def __init__(self, seconds: float = 0.05, fail_on: int | None = None) -> None:
        self.seconds = seconds
        self.fail_on = fail_on
        self.batches: list[int] = []
        self.lengths: list[set[int]] = []  # the window lengths of each call
        self.lock = threading.Lock()

    def __call__(self, ids: np.ndarray, positions: np.ndarray) -> np.ndarray:
        lengths = positions[:, 0] + 1
        with self.lock:
            self.batches.append(len(ids))
            self.lengths.append(set(lengths.tolist()))
        time.sleep(self.seconds)
        if self.fail_on is not None and (ids == self.fail_on).any():
            raise RuntimeError("graph failed")
        sums = np.asarray([ids[r, : lengths[r]].sum() for r in range(len(ids))])
        return np.stack([sums, lengths], axis=1)[:, None, :].astype(np.float32)


def test_concurrent_calls_share_graph_calls_and_each_gets_its_rows():
    graph = FakeGraph()
    batcher = StepBatcher(graph, max_rows=16)
    inputs = [[[i, i + 1, i + 2][: 1 + i % 3]] for i in range(8)]  # windows of 1 to 3 tokens
    results = concurrently(batcher, inputs)
    for windows, logits in zip(inputs, results, strict=True):
        assert logits.shape == (1, 2)
        assert logits[0].tolist() == [sum(windows[0]), len(windows[0])]
    assert sum(graph.batches) == 8  # every row computed once
    assert len(graph.batches) <= 3, graph.batches  # one alone, then the ones that queued


def test_every_graph_call_is_reported_with_its_rows():
    seen: list[int] = []
    graph = FakeGraph(seconds=0.02)
    batcher = StepBatcher(graph, max_rows=16, on_batch=seen.append)
    concurrently(batcher, [[[i], [i, 1]] for i in range(5)])
    assert seen == graph.batches and sum(seen) == 10


def test_metrics_count_batched_rows(client):
    """/metrics: a histogram of sequences per batched graph call, per model."""
    for prompt in ("Era uma vez", "Capitu"):
        assert client.post("/next-token", json={"model": "bengio", "prompt": prompt}).is_success
    text = client.get("/metrics").text
    count = next(
        line
        for line in text.splitlines()
        if line.startswith('machado_batch_rows_count{model="bengio"}')
    )
    assert float(count.split()[-1]) >= 2


def test_a_batch_never_passes_max_rows():
    graph = FakeGraph(seconds=0.02)
    batcher = StepBatcher(graph, max_rows=4)
    inputs = [[[i], [i, 1], [i, 2]] for i in range(6)]  # three rows a call
    results = concurrently(batcher, inputs)
    assert max(graph.batches) <= 4 and sum(graph.batches) == 18
    for windows, logits in zip(inputs, results, strict=True):
        assert logits[:, 0].tolist() == [sum(w) for w in windows]


def test_a_failed_graph_call_fails_its_batch_only():
    graph = FakeGraph(fail_on=99)
    batcher = StepBatcher(graph, max_rows=16)
    results = concurrently(batcher, [[[99]], [[1]], [[2]]])
    assert any(isinstance(r, RuntimeError) for r in results)
    assert batcher([[5, 6]])[0].tolist() == [11, 2]  # the model is free again


def test_one_row_larger_than_max_rows_still_runs():
    batcher = StepBatcher(FakeGraph(seconds=0), max_rows=2)
    assert batcher([[1], [2], [3]])[:, 0].tolist() == [1, 2, 3]


def _lockstep(batcher: StepBatcher, keys: list[object], steps: int, pause: float) -> None:
    """Each key a generation in its own thread: ``steps`` calls, ``pause`` s apart."""

    def generate(key: object) -> None:
        for step in range(steps):
            batcher([[step]], key)
            time.sleep(pause)

    concurrently(generate, keys)


def test_generations_under_way_keep_sharing_calls_when_the_batch_waits_for_them():
    """Two generations choosing their tokens between steps: without a wait the first one back
    runs alone; waiting for the last batch's generations keeps them in one call a step."""
    apart, together = (StepBatcher(FakeGraph(0.01), 16, max_wait=w) for w in (0.0, 0.5))
    for batcher in (apart, together):
        _lockstep(batcher, [object(), object()], steps=12, pause=0.004)
    assert together.rows == apart.rows == 24
    assert together.calls <= 13, together.run.batches  # pairs (the first step may split)
    assert apart.calls > together.calls + 4, apart.run.batches


@pytest.mark.slow
def test_a_batch_does_not_wait_for_a_generation_that_left_or_stalled():
    """A generation that ended (leave) is not waited for; one that stalls without a word costs
    the others one wait, not one per step."""
    # Wide margins for a busy CI machine: waiting at every step would take 5 s.
    batcher = StepBatcher(FakeGraph(0.0), 16, max_wait=1.0)
    gone, stalled, going = object(), object(), object()
    batcher([[1]], gone)  # the last batch: gone's
    batcher.leave(gone)
    start = time.monotonic()
    batcher([[1]], going)
    assert time.monotonic() - start < 0.5  # nobody to wait for
    batcher([[1]], stalled)  # the last batch: stalled's, which never comes back
    start = time.monotonic()
    for _ in range(5):
        batcher([[1]], going)
    assert 1.0 <= time.monotonic() - start < 2.5  # one wait, then none


def test_batch_wait_reaches_the_engines(client):
    """MACHADO_BATCH_WAIT_MS (default 2) is what the service's batchers wait."""
    engines = client.app.state.engines
    assert engines["bengio"].batcher.max_wait == pytest.approx(0.002)
    assert engines["attention"].decode_batcher.max_wait == pytest.approx(0.002)


class FakeDecoder:
    """A decoder graph whose logits say where each row's last token sits (its position) and
    how many keys it may see; its caches grow by the new tokens, each key and value its token
    id + 1."""

    def __init__(self) -> None:
        self.batches: list[tuple[int, int]] = []  # (rows, new tokens) per call
        self.news: list[set[int]] = []  # the real new tokens of its rows, per call
        self.lock = threading.Lock()

    def run(self, _, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        ids, keys = feed["input_ids"], feed["past_keys"]
        with self.lock:
            self.batches.append(ids.shape)
            self.news.append(set(feed["attention_mask"][:, -ids.shape[1] :].sum(1).tolist()))
        time.sleep(0.02)
        logits = np.stack([feed["positions"][:, -1], feed["attention_mask"].sum(1)], axis=1)
        shape = (*keys.shape[:3], ids.shape[1], keys.shape[4])  # (L, B, H, T, Dh)
        new = np.broadcast_to((ids + 1)[None, :, None, :, None], shape).astype(np.float32)
        return [logits, np.concatenate([keys, new], 3), np.concatenate([keys, new], 3)]


def test_decode_steps_batch_with_steps_and_prefills_with_prefills():
    """Concurrent one-token steps and prefills of 2 to 40 new tokens, after caches of several
    lengths: steps never share a call with prefills, prefills of different lengths do, and
    each caller sees its own positions and gets exactly its own cache and new keys back, none
    of the padding."""
    graph = FakeDecoder()
    batcher = DecodeBatcher(graph, max_rows=16)
    cases = [(past, new) for past in (0, 5) for new in (1, 2, 3, 7, 8, 9, 40)] * 2

    def step(case: tuple[int, int]) -> tuple:
        past, new = case
        keys = np.full((2, 1, 3, past, 4), -float(past), dtype=np.float32)
        ids = np.arange(10, 10 + new, dtype=np.int64)[None]
        return batcher(ids, keys, keys)

    results = concurrently(step, cases)
    assert sum(rows for rows, _ in graph.batches) == len(cases)
    assert not any(1 in news and len(news) > 1 for news in graph.news), graph.news
    assert any(len(news) > 1 for news in graph.news), graph.news  # lengths mixed
    for (past, new), (logits, keys, values) in zip(cases, results, strict=True):
        assert logits.tolist() == [[past + new - 1, past + new]]
        assert keys.shape == values.shape == (2, 1, 3, past + new, 4)
        assert (keys[:, :, :, :past] == -past).all()
        expected = np.arange(11, 11 + new, dtype=np.float32)
        assert (keys[:, :, :, past:] == expected[None, None, None, :, None]).all()
        assert (values == keys).all()
    prefills = [c for c in cases if c[1] > 1]
    assert len(graph.batches) < len(cases) - len(prefills) // 2, graph.batches


@pytest.mark.parametrize(
    ("batch", "call", "joins"),
    [
        ([1, 1], 1, True),
        ([1], 4, False),  # a prompt never pads one-token steps
        ([4], 1, False),
        ([10, 8], 12, True),  # 20 -> 36 tokens: 16 added, alone 20 + 12
        ([20], 10, True),  # 20 -> 40: 20 added, alone 20 + 10
        ([40], 2, False),  # 40 -> 80: 40 added, alone 20 + 2
        ([2, 3], 40, False),  # 6 -> 120: 114 added, alone 20 + 40
        ([200], 192, True),  # two refills of the window
    ],
)
def test_which_steps_may_share_a_decoder_call(batch, call, joins):
    """Steps of one token join steps only; a prefill joins prefills when the padding it adds
    is less work than a call of its own (CALL_COST_TOKENS plus its tokens)."""
    batcher = DecodeBatcher(FakeDecoder(), max_rows=16)

    def queued(new: int):
        keys = np.zeros((2, 1, 3, 0, 4), dtype=np.float32)
        return _Call((np.zeros((1, new), dtype=np.int64), keys, keys), 1)

    assert batcher._fits([queued(n) for n in batch], queued(call)) is joins


@pytest.mark.parametrize(
    ("batch", "call", "call_cost", "joins"),
    [
        ([256, 250], 240, 20, True),
        ([256], 2, 20, False),  # 254 tokens of padding against a call of its own
        ([2, 3], 256, 20, False),
        ([2, 3], 256, None, True),  # a GPU, or Bengio: padding is cheap
        ([8], 1, None, True),
    ],
)
def test_which_windows_may_share_a_call(batch, call, call_cost, joins):
    """Where padding costs (an attention graph on the CPU), a window joins a batch while the
    padding it adds is less work than a call of its own; otherwise any window joins."""
    batcher = StepBatcher(FakeGraph(0), max_rows=16, call_cost=call_cost)
    queued = [_Call([[1] * n], 1) for n in batch]
    assert batcher._fits(queued, _Call([[1] * call], 1)) is joins


def test_engines_weigh_padding_for_attention_models_on_the_cpu_only(models):
    """The attention models' windows and prompts cost by the token on the CPU; Bengio's windows
    by the window; on CUDA every batch takes any padding."""
    engines = {name: Engine(m, max_batch_rows=16) for name, m in models.items()}
    costs = {name: e.batcher.call_cost for name, e in engines.items()}
    assert costs == {"attention": 20, "attention-seed": 20, "bengio": None}
    on_cuda = dataclasses.replace(models["attention"], provider="CUDAExecutionProvider")
    assert Engine(on_cuda, max_batch_rows=16).batcher.call_cost is None


def test_decoders_weigh_padding_on_the_cpu_only(cached_models):
    """Prompts of different lengths share a decoder call while the padding pays on the CPU; on
    CUDA any prompts share one."""
    model = cached_models["attention"]
    assert Engine(model, max_batch_rows=16).decode_batcher.call_cost == 20
    on_cuda = dataclasses.replace(model, provider="CUDAExecutionProvider")
    assert Engine(on_cuda, max_batch_rows=16).decode_batcher.call_cost is None


def test_short_windows_do_not_wait_behind_long_ones():
    """Concurrent windows of 2 and of 256 tokens: the short ones run in calls of their own
    instead of padded to 256, and every caller gets the logits of its own window."""
    graph = FakeGraph(seconds=0.02)
    batcher = StepBatcher(graph, max_rows=16)
    windows = [[1] * 256, [2] * 2, [1] * 255, [3] * 2] * 3
    results = concurrently(lambda w: batcher([w]), windows)
    for window, logits in zip(windows, results, strict=True):
        assert logits.tolist() == [[sum(window), len(window)]]
    assert not any(2 in lengths and 256 in lengths for lengths in graph.lengths), graph.lengths
    assert len(graph.batches) < len(windows)


@pytest.fixture(scope="module")
def models():
    return load_models(make_options(kv_cache=False))


@pytest.mark.parametrize("name", ["attention", "attention-seed", "bengio"])
def test_right_padding_changes_no_logit(models, name):
    """Windows of different lengths in one padded graph call: each row's logits are its own."""
    engine = Engine(models[name])
    rng = np.random.default_rng(0)
    lengths = [1, 3, engine.context // 2, engine.context]
    windows = [[engine.eot, *rng.integers(0, engine.vocab_size, n - 1).tolist()] for n in lengths]
    batcher = StepBatcher(engine._logits, max_rows=16, pad_id=engine.eot)
    together = batcher(windows)
    assert batcher.calls == 1 and together.shape == (4, engine.vocab_size)
    for row, window in enumerate(windows):
        assert np.abs(together[row] - engine.next_logits(window)).max() < 1e-4


@pytest.fixture(scope="module")
def cached_models():
    """The models with decoder.onnx's cache and no cache slots (runtime.slots has its tests)."""
    return load_models(make_options(kv_cache=True, kv_slots=0))


@pytest.fixture(scope="module")
def slot_models():
    # No drafts: these tests count a row per token and step (a lone greedy generation's
    # drafts take fewer; tests/runtime/test_speculation.py tests them).
    return load_models(make_options(kv_cache=True, kv_slots=16, draft_tokens=0))


def test_padded_prefills_change_no_logit(cached_models):
    """Prompts of different lengths (one of them two rows, a prompt's two choices) read in one
    decoder call, the shorter ones padded in front: each caller gets the logits and the cache
    that its prompt gets alone."""
    model = cached_models["attention"]
    engine = Engine(model)
    rng = np.random.default_rng(1)
    prompts = [
        [engine.eot, *rng.integers(0, engine.vocab_size, length - 1).tolist()]
        for length in (5, 40, 17, 2)
    ]
    counts = [1, 2, 1, 1]
    batcher = DecodeBatcher(model.decoder_session, max_rows=16)
    empty = [CachedContext(model.decoder_session, engine.context)._empty(n) for n in counts]
    steps = [(np.asarray([p] * n), e, e) for p, n, e in zip(prompts, counts, empty, strict=True)]
    together = batcher._compute(steps)
    for (logits, keys, values), prompt, count in zip(together, prompts, counts, strict=True):
        alone = CachedContext(model.decoder_session, engine.context)
        expected = alone.next_logits_rows([prompt] * count)
        assert logits.shape == expected.shape
        assert np.abs(logits - expected).max() < 1e-4
        assert keys.shape == alone.keys.shape
        assert np.abs(keys - alone.keys).max() < 1e-5
        assert np.abs(values - alone.values).max() < 1e-5
        assert keys.base is None and values.base is None


def test_padded_caches_change_no_logit(cached_models):
    """Steps of caches of different lengths (one of them two rows, a prompt's two choices) in
    one decoder call, the shorter caches padded in front: each caller gets the logits and the
    cache it gets alone."""
    model = cached_models["attention"]
    engine = Engine(model)
    rng = np.random.default_rng(0)
    contexts, rows = [], []
    for length, count in [(5, 1), (40, 2), (17, 1), (1, 1)]:
        prompt = [engine.eot, *rng.integers(0, engine.vocab_size, length - 1).tolist()]
        context = CachedContext(model.decoder_session, engine.context)
        context.next_logits_rows([prompt] * count)  # prefill, alone
        contexts.append(context)
        rows.append([[*prompt, int(rng.integers(0, engine.vocab_size))]] * count)
    batcher = DecodeBatcher(model.decoder_session, max_rows=16)
    steps = [(np.asarray(r)[:, -1:], c.keys, c.values) for r, c in zip(rows, contexts, strict=True)]
    together = batcher._compute(steps)
    for (logits, keys, values), context, r in zip(together, contexts, rows, strict=True):
        alone = context.next_logits_rows(r)
        assert logits.shape == alone.shape
        assert np.abs(logits - alone).max() < 1e-4
        assert keys.shape == context.keys.shape
        assert np.abs(keys - context.keys).max() < 1e-5
        # its own memory: no view keeps the batch's whole cache alive
        assert keys.base is None and values.base is None
        assert np.abs(values - context.values).max() < 1e-5


@pytest.mark.slow
@pytest.mark.parametrize(
    "name", ["attention", "bengio", "attention (key/value cache)", "attention (cache slots)"]
)
def test_concurrent_generations_match_their_solo_runs(models, cached_models, slot_models, name):
    """Eight greedy generations at once through one batching engine: each makes the tokens it
    makes alone, and they shared graph calls."""
    loaded = models
    if name.endswith("(key/value cache)"):
        name, loaded = "attention", cached_models
    elif name.endswith("(cache slots)"):
        name, loaded = "attention", slot_models
    solo, shared = Engine(loaded[name], max_batch_rows=16), Engine(loaded[name], max_batch_rows=16)
    prompts = [
        f"Capítulo {i}. Era uma vez {'um homem' if i % 2 else 'uma mulher'}" for i in range(8)
    ]
    greedy = SamplingParams(temperature=0.0)

    def generate(engine: Engine, prompt: str) -> list[int]:
        *_, final = engine.generate(GenerationRequest(prompt, 16, greedy, seed=0))
        return [s.id for s in final.steps]

    expected = [generate(solo, p) for p in prompts]  # one after another: one row a call
    got = concurrently(lambda p: generate(shared, p), prompts)
    assert got == expected
    batchers = {
        id(cached_models): (solo.decode_batcher, shared.decode_batcher),
        id(slot_models): (solo.scheduler, shared.scheduler),
    }.get(id(loaded), (solo.batcher, shared.batcher))
    alone, together = batchers
    assert together.rows == alone.rows == alone.calls
    assert together.calls < alone.calls, (together.calls, alone.calls)
