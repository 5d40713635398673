"""Next-token calls of concurrent requests batched into one graph call (service.batching)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from service.batching import StepBatcher
from service.engine import Engine
from service.registry import load_models
from service.sampling import SamplingParams
from tests.service.conftest import make_settings


class FakeGraph:
    """Logits that name their window: row r's logits are [sum of its window, its length]."""

    def __init__(self, seconds: float = 0.05, fail_on: int | None = None) -> None:
        self.seconds = seconds
        self.fail_on = fail_on
        self.batches: list[int] = []
        self.lock = threading.Lock()

    def __call__(self, ids: np.ndarray, positions: np.ndarray) -> np.ndarray:
        with self.lock:
            self.batches.append(len(ids))
        time.sleep(self.seconds)
        if self.fail_on is not None and (ids == self.fail_on).any():
            raise RuntimeError("graph failed")
        lengths = positions[:, 0] + 1
        sums = np.asarray([ids[r, : lengths[r]].sum() for r in range(len(ids))])
        return np.stack([sums, lengths], axis=1)[:, None, :].astype(np.float32)


def _concurrently(fn, inputs: list) -> list:
    """``fn(x)`` for every input, each in its own thread, started together."""
    results: list = [None] * len(inputs)
    start = threading.Barrier(len(inputs))

    def work(i: int) -> None:
        start.wait()
        try:
            results[i] = fn(inputs[i])
        except Exception as error:
            results[i] = error

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
        assert not thread.is_alive(), "a caller hung"
    return results


def test_concurrent_calls_share_graph_calls_and_each_gets_its_rows():
    graph = FakeGraph()
    batcher = StepBatcher(graph, max_rows=16)
    inputs = [[[i, i + 1, i + 2][: 1 + i % 3]] for i in range(8)]  # windows of 1 to 3 tokens
    results = _concurrently(batcher, inputs)
    for windows, logits in zip(inputs, results, strict=True):
        assert logits.shape == (1, 2)
        assert logits[0].tolist() == [sum(windows[0]), len(windows[0])]
    assert sum(graph.batches) == 8  # every row computed once
    assert len(graph.batches) <= 3, graph.batches  # one alone, then the ones that queued


def test_every_graph_call_is_reported_with_its_rows():
    seen: list[int] = []
    graph = FakeGraph(seconds=0.02)
    batcher = StepBatcher(graph, max_rows=16, on_batch=seen.append)
    _concurrently(batcher, [[[i], [i, 1]] for i in range(5)])
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
    results = _concurrently(batcher, inputs)
    assert max(graph.batches) <= 4 and sum(graph.batches) == 18
    for windows, logits in zip(inputs, results, strict=True):
        assert logits[:, 0].tolist() == [sum(w) for w in windows]


def test_a_failed_graph_call_fails_its_batch_only():
    graph = FakeGraph(fail_on=99)
    batcher = StepBatcher(graph, max_rows=16)
    results = _concurrently(batcher, [[[99]], [[1]], [[2]]])
    assert any(isinstance(r, RuntimeError) for r in results)
    assert batcher([[5, 6]])[0].tolist() == [11, 2]  # the model is free again


def test_one_row_larger_than_max_rows_still_runs():
    batcher = StepBatcher(FakeGraph(seconds=0), max_rows=2)
    assert batcher([[1], [2], [3]])[:, 0].tolist() == [1, 2, 3]


@pytest.fixture(scope="module")
def models():
    return load_models(make_settings(kv_cache=False))


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


@pytest.mark.parametrize("name", ["attention", "bengio"])
def test_concurrent_generations_match_their_solo_runs(models, name):
    """Eight greedy generations at once through one batching engine: each makes the tokens it
    makes alone, and they shared graph calls."""
    solo, shared = Engine(models[name], max_batch_rows=16), Engine(models[name], max_batch_rows=16)
    prompts = [
        f"Capítulo {i}. Era uma vez {'um homem' if i % 2 else 'uma mulher'}" for i in range(8)
    ]
    greedy = SamplingParams(temperature=0.0)

    def generate(engine: Engine, prompt: str) -> list[int]:
        *_, final = engine.generate(prompt, 16, greedy, 0, [], 0)
        return [s.id for s in final.steps]

    expected = [generate(solo, p) for p in prompts]  # one after another: one row a call
    got = _concurrently(lambda p: generate(shared, p), prompts)
    assert got == expected
    assert shared.batcher.rows == solo.batcher.rows == solo.batcher.calls
    assert shared.batcher.calls < solo.batcher.calls, (shared.batcher.calls, solo.batcher.calls)
