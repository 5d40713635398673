"""Generation on key/value cache slots (runtime.slots, runtime.decode_graph): the same tokens
and logits as decoder.onnx's cache, slots given back whatever ends a generation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from runtime.batching import decode_feed
from runtime.deadline import Deadline
from runtime.engine import Engine
from runtime.errors import TimedOut
from runtime.loader import load_models
from runtime.options import LoadOptions
from runtime.results import Generation, GenerationRequest
from runtime.sampling import SamplingParams
from runtime.slots import SlotCache

MODELS = Path(__file__).resolve().parents[2] / "models"


@pytest.fixture(scope="module")
def slotted():
    return load_models(LoadOptions(models_dir=MODELS, kv_slots=4))["attention"]


@pytest.fixture(scope="module")
def plain():
    return load_models(LoadOptions(models_dir=MODELS, kv_slots=0))["attention"]


def final(engine: Engine, request: GenerationRequest) -> Generation:
    *_, last = engine.generate(request)
    return last


@pytest.mark.slow
def test_only_attention_models_on_the_cpu_get_slots(slotted, plain):
    models = load_models(LoadOptions(models_dir=MODELS, kv_slots=2))
    assert models["attention"].slot_session is not None and models["attention"].kv_slots == 2
    assert models["bengio"].slot_session is None  # no key/value cache graph
    assert plain.slot_session is None and Engine(plain).scheduler is None


@pytest.mark.slow
def test_int8_slots_have_block_weights_and_batch_exactly():
    """With int8 weights the slot graph's products are MatMulNBits, whose activations are
    quantized row by row: a row's logits are the same alone or in a batch."""
    model = load_models(LoadOptions(models_dir=MODELS, kv_slots=4, quantize="int8"))["attention"]
    assert model.precision == "int8" and model.slot_session is not None
    cache = SlotCache(model.slot_session, 4, model.card["config"])
    prompt = [0, 36, 551, 1651, 77]
    for slot in range(4):
        cache.step([slot], [prompt])
    alone = cache.step([0], [[5]])
    together = cache.step([1, 2, 3], [[5], [9], [5]])
    assert np.array_equal(alone[0], together[0]) and np.array_equal(alone[0], together[2])
    assert not np.array_equal(together[0], together[1])


def test_decode_graph_matches_decoder_onnx(slotted):
    """A batched prefill of two prompts of different lengths, right-padded, then greedy steps:
    each row's logits are decoder.onnx's for that row alone."""
    cache = SlotCache(slotted.slot_session, 2, slotted.card["config"])
    rng = np.random.default_rng(0)
    prompts = [[0, *rng.integers(1, 8192, 19).tolist()], [0, *rng.integers(1, 8192, 11).tolist()]]
    got = cache.step([0, 1], prompts)
    shape = (6, 1, 6, 0, 64)
    for row, prompt in enumerate(prompts):
        empty = np.zeros(shape, np.float32)
        logits, keys, values = slotted.decoder_session.run(
            None, decode_feed(np.asarray([prompt]), empty, empty)
        )
        assert np.abs(logits[0] - got[row]).max() < 1e-4
        for layer in (0, 5):  # the slot holds the keys and values decoder.onnx returns
            held = [b[row, :, : len(prompt)] for b in cache.buffers[layer]]
            assert np.abs(held[0] - keys[layer, 0]).max() < 1e-4
            assert np.abs(held[1] - values[layer, 0]).max() < 1e-4
    assert cache.lengths[:2].tolist() == [20, 12]
    steps = cache.step([0, 1], [[5], [7]])  # one call for both
    assert steps.shape == (2, 8192) and cache.lengths[:2].tolist() == [21, 13]


@pytest.mark.slow
def test_generations_past_the_context_match_decoder_onnx(slotted, plain):
    """300 greedy tokens from a 256-token context: the window restarts at 3/4 of it in both."""
    a, b = Engine(slotted, max_batch_rows=4), Engine(plain, max_batch_rows=4)
    for prompt in ("Capitu olhou para mim", "A"):
        request = GenerationRequest(prompt, 300)
        x, y = final(a, request), final(b, request)
        assert [s.id for s in x.steps] == [s.id for s in y.steps]
        assert max(abs(s.logprob - t.logprob) for s, t in zip(x.steps, y.steps, strict=True)) < 1e-4
    assert a.scheduler.cache.free == 4


def test_choices_and_sampling_match_and_free_their_slots(slotted, plain):
    a, b = Engine(slotted), Engine(plain)
    request = GenerationRequest("Era uma vez", 24, SamplingParams(temperature=1.0), stop=(",",))
    got = {c: g.text for c, g in a.generate_many(request, [1, 2, 3]) if isinstance(g, Generation)}
    want = {c: g.text for c, g in b.generate_many(request, [1, 2, 3]) if isinstance(g, Generation)}
    assert got == want
    assert a.scheduler.cache.free == 4


def test_slots_come_back_when_a_generation_stops_or_is_dropped(slotted):
    engine = Engine(slotted)
    cache = engine.scheduler.cache
    steps = engine.generate(GenerationRequest("Capitu", 50))
    next(steps)
    assert cache.free == 3
    steps.close()  # the client went away
    assert cache.free == 4
    with pytest.raises(TimedOut):
        list(engine.generate(GenerationRequest("Capitu", 50), Deadline(1e-9)))
    assert cache.free == 4


def test_no_free_slot_generates_through_decoder_onnx(slotted, plain):
    engine = Engine(slotted)
    cache = engine.scheduler.cache
    held = cache.acquire(4)
    before = engine.decode_batcher.calls if engine.decode_batcher else None
    got = final(engine, GenerationRequest("Capitu olhou", 8))
    assert [s.id for s in got.steps] == [
        s.id for s in final(Engine(plain), GenerationRequest("Capitu olhou", 8)).steps
    ]
    assert cache.free == 0 and engine.scheduler.calls == 0
    if before is not None:
        assert engine.decode_batcher.calls > before
    cache.release(held)


def test_rows_between_the_stepped_slots_keep_their_cache(slotted):
    """Slots 0 and 2 step together; slot 1, in the called range but not in the step, gets a
    throwaway token past its length and still continues as it would have."""
    engine = Engine(slotted)
    cache = SlotCache(slotted.slot_session, 4, slotted.card["config"])
    prompts = [engine.prompt_ids(p) for p in ("Capitu olhou", "Não tive filhos", "A vida")]
    for slot, prompt in enumerate(prompts):
        cache.step([slot], [prompt])
    cache.step([0, 2], [[11], [12]])  # slot 1 idle in the range
    middle = cache.step([1], [[13]])
    cache.step([3], [prompts[1]])
    alone = cache.step([3], [[13]])
    assert np.abs(middle - alone).max() < 1e-4


def test_slot_graph_matches_decoder_onnx_by_the_load_check(slotted):
    """The check the loader runs before CUDA slots serve: float32 slots agree with
    decoder.onnx to float32 rounding; float16 keys and values (CUDA's) within its bound."""
    import dataclasses

    import onnxruntime as ort

    from runtime.decode_graph import build_decode_graph
    from runtime.loader import CUDA_SLOT_GAP
    from runtime.slots import slot_logits_gap

    config = slotted.card["config"]
    exact = SlotCache(slotted.slot_session, 1, config)
    assert slot_logits_gap(exact, slotted.decoder_session) < 1e-4
    graph = build_decode_graph(slotted.folder / "model.onnx", config, cache="float16")
    half = ort.InferenceSession(graph, providers=["CPUExecutionProvider"])
    gap = slot_logits_gap(SlotCache(half, 1, config, "cpu", np.float16), slotted.decoder_session)
    assert 1e-4 < gap < CUDA_SLOT_GAP
    # Generation on float16 slots (the code path CUDA takes, here on the CPU): decoder.onnx's
    # greedy tokens.
    model = dataclasses.replace(slotted, slot_session=half, slot_dtype=np.float16)
    engine = Engine(model, max_batch_rows=2)
    request = GenerationRequest("Capitu olhou para mim", 40, SamplingParams(temperature=0.0))
    plain = Engine(dataclasses.replace(slotted, slot_session=None))
    assert [s.id for s in final(engine, request).steps] == [
        s.id for s in final(plain, request).steps
    ]
    assert engine.scheduler.calls > 0 and engine.scheduler.cache.dtype == np.float16
