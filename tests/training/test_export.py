"""ONNX export: ONNX Runtime and PyTorch agree on logits, attention weights and greedy text."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from runtime.batching import decode_feed
from runtime.engine import Engine
from runtime.loader import open_model
from runtime.results import GenerationRequest
from training.checkpoint import load_checkpoint
from training.export import export_checkpoint, runtime_ops
from training.tokenizer import file_sha256, load_tokenizer
from training.train import TrainConfig, train

pytestmark = pytest.mark.slow  # real weights on a real port, training runs, or a browser

TEXT = "Não há coração que resista. Capitu olhou para Bentinho, e o mundo parou um instante."


@pytest.fixture(scope="module", params=["attention", "bengio"])
def exported(request, prepared, tmp_path_factory):
    """A briefly trained model of each kind, exported in float16 and float32."""
    kind = request.param
    root = tmp_path_factory.mktemp(f"export-{kind}")
    overrides = (
        {"d_model": 32, "n_layer": 2, "n_head": 2, "context": 24}
        if kind == "attention"
        else {"block": 24}
    )
    train(
        TrainConfig(
            kind=kind,
            overrides=overrides,
            out=root / "run",
            data=prepared,
            batch_size=8,
            lr=3e-3,
            max_steps=60,
            eval_interval=60,
            device="cpu",
            progress=False,
        )
    )
    folders = {}
    for storage in ("float16", "float32"):
        folders[storage] = root / "models" / storage / kind
        export_checkpoint(
            root / "run" / "best", folders[storage], prepared / "tokenizer.json", storage=storage
        )
    return kind, root / "run" / "best", folders, load_tokenizer(prepared / "tokenizer.json")


def test_export_card_records_each_files_size_and_sha256(exported):
    """The card lists every graph and the weights with their size and sha256 (what the service
    checks before loading); `checksums` writes the same for a folder whose card lacks them."""
    from training.__main__ import main

    _, _, folders, _ = exported
    folder = folders["float16"]
    card = json.loads((folder / "card.json").read_text())
    on_disk = sorted(p.name for p in folder.iterdir() if p.suffix in (".onnx", ".bin"))
    assert sorted(card["files"]) == on_disk and "weights.bin" in on_disk, card["files"]
    for name, file in card["files"].items():
        assert file == {
            "bytes": (folder / name).stat().st_size,
            "sha256": file_sha256(folder / name),
        }
    files = card.pop("files")
    (folder / "card.json").write_text(json.dumps(card))
    assert main(["checksums", str(folder)]) == 0
    assert json.loads((folder / "card.json").read_text())["files"] == files


def _torch_model(checkpoint, storage: str):
    model = load_checkpoint(checkpoint)
    if storage == "float16":
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(p.half().float())
    return model


@pytest.mark.parametrize("storage", ["float16", "float32"])
def test_export_logits_match_torch_on_random_ids(exported, storage):
    """Max |ORT - torch| <= 1e-4 for every position, several lengths, batch 2."""
    _, checkpoint, folders, _ = exported
    model, onnx = _torch_model(checkpoint, storage), open_model(folders[storage])
    rng = np.random.default_rng(0)
    for steps in (1, 5, onnx.context):
        ids = rng.integers(0, onnx.card["config"]["vocab_size"], (2, steps))
        with torch.no_grad():
            expected = model(torch.as_tensor(ids))[0].numpy()
        diff = np.abs(onnx.logits(ids) - expected).max()
        assert diff <= 1e-4, f"{storage} T={steps}: {diff}"


def test_export_logits_match_torch_on_real_text(exported):
    _, checkpoint, folders, tokenizer = exported
    model, onnx = _torch_model(checkpoint, "float16"), open_model(folders["float16"])
    ids = np.asarray(tokenizer.encode(TEXT).ids[: onnx.context])[None]
    with torch.no_grad():
        expected = model(torch.as_tensor(ids))[0].numpy()
    diff = np.abs(onnx.logits(ids) - expected).max()
    assert diff <= 1e-4, diff


def test_export_last_position_only(exported):
    """Asking for one position gives that position's logits and nothing else."""
    _, _, folders, _ = exported
    onnx = open_model(folders["float16"])
    ids = np.arange(1, 11)[None]
    last = onnx.logits(ids, np.asarray([[9]]))
    assert last.shape == (1, 1, onnx.card["config"]["vocab_size"])
    assert np.abs(last[0, 0] - onnx.logits(ids)[0, 9]).max() <= 1e-5


def test_export_attention_weights_match_torch(exported):
    kind, checkpoint, folders, tokenizer = exported
    if kind != "attention":
        pytest.skip("the Bengio model has no attention")
    model, onnx = _torch_model(checkpoint, "float16"), open_model(folders["float16"])
    ids = tokenizer.encode(TEXT).ids[: onnx.context]
    with torch.no_grad():
        _, weights = model.hidden_states(torch.as_tensor([ids]), return_weights=True)
    expected = torch.stack(weights, 1)[0].numpy()  # (L, H, T, T)
    got = onnx.attention_weights(np.asarray([ids]))[0]
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= 1e-4


def test_export_greedy_50_tokens_identical(exported):
    """50 greedy tokens from the runtime's engine (as the service generates) are the 50
    PyTorch picks, after the end-of-text token that the engine puts before a prompt."""
    _, checkpoint, folders, tokenizer = exported
    model, onnx = _torch_model(checkpoint, "float16"), open_model(folders["float16"])
    prompt = tokenizer.encode("Capitu olhou").ids
    ids = [tokenizer.token_to_id("<|endoftext|>"), *prompt]
    with torch.no_grad():
        for _ in range(50):
            window = torch.as_tensor([ids[-onnx.context :]])
            ids.append(int(model(window)[0][0, -1].argmax()))
    *_, final = Engine(onnx).generate(GenerationRequest(prompt, 50))
    got, expected = [s.id for s in final.steps], ids[len(prompt) + 1 :]
    assert got == expected[: len(got)]
    if final.finish_reason == "end_of_text":  # the engine stops where PyTorch chose the end
        assert expected[len(got)] == ids[0]
    else:
        assert len(got) == 50


def test_export_card_describes_the_model(exported, prepared):
    kind, _, folders, _ = exported
    card = json.loads((folders["float16"] / "card.json").read_text())
    assert card["kind"] == kind and card["storage"] == "float16"
    assert card["tokenizer"]["sha256"] == file_sha256(prepared / "tokenizer.json")
    assert (folders["float16"].parent / card["tokenizer"]["file"]).is_file()
    assert card["graphs"]["model.onnx"]["inputs"][0] == {
        "name": "input_ids",
        "dtype": "int64",
        "shape": ["batch", "sequence"],
    }
    assert card["graphs"]["model.onnx"]["outputs"][0]["shape"] == [
        "batch",
        "positions",
        card["config"]["vocab_size"],
    ]
    for key in ("parameters", "context", "training", "metrics", "opset"):
        assert key in card
    assert card["training"]["tokens_seen"] > 0 and card["training"]["hardware"]
    assert ("attention.onnx" in card["graphs"]) == (kind == "attention")


@pytest.mark.parametrize("graph_file", ["attention.onnx", "decoder.onnx"])
def test_export_extra_graphs_share_the_weights(exported, graph_file):
    """attention.onnx and decoder.onnx store no weights of their own: they read weights.bin."""
    kind, _, folders, _ = exported
    if kind != "attention":
        pytest.skip("the Bengio model has one graph")
    import onnx

    folder = folders["float16"]
    graph = onnx.load(str(folder / graph_file), load_external_data=False).graph
    inline = [i.name for i in graph.initializer if len(i.raw_data) >= 1024]
    assert inline == [], f"weights stored twice: {inline}"
    external = {e.value for i in graph.initializer for e in i.external_data if e.key == "location"}
    assert external == {"weights.bin"}
    half = (folder / "weights.bin").stat().st_size
    full = (folders["float32"] / "weights.bin").stat().st_size
    assert half < 0.6 * full


def test_export_refuses_another_tokenizer(exported, tmp_path):
    _, checkpoint, _, _ = exported
    other = tmp_path / "tokenizer.json"
    other.write_text("{}")
    with pytest.raises(ValueError, match="not the tokenizer"):
        export_checkpoint(checkpoint, tmp_path / "models" / "m", other)


@pytest.mark.parametrize("storage", ["float16", "float32"])
def test_export_decoder_cache_matches_full_windows(exported, storage):
    """decoder.onnx: a prompt read at once, then one token a call with the key/value cache,
    gives the logits torch computes over the whole window at every step (to 1e-4), up to the
    context's last position."""
    kind, checkpoint, folders, _ = exported
    if kind != "attention":
        pytest.skip("the Bengio model has no key/value cache")
    import onnxruntime as ort

    model = _torch_model(checkpoint, storage)
    onnx = open_model(folders[storage])
    decoder = ort.InferenceSession(
        str(folders[storage] / "decoder.onnx"), providers=["CPUExecutionProvider"]
    )
    card = onnx.card
    layers, heads = card["config"]["n_layer"], card["config"]["n_head"]
    head_dim = card["config"]["d_model"] // heads
    rng = np.random.default_rng(1)
    ids = rng.integers(0, card["config"]["vocab_size"], (2, onnx.context))
    with torch.no_grad():
        expected = model(torch.as_tensor(ids))[0].numpy()  # (B, T, V)
    for prompt in (1, 7):
        empty = np.zeros((layers, 2, heads, 0, head_dim), dtype=np.float32)
        logits, keys, values = decoder.run(None, decode_feed(ids[:, :prompt], empty, empty))
        assert np.abs(logits - expected[:, prompt - 1]).max() <= 1e-4
        for t in range(prompt, onnx.context):
            logits, keys, values = decoder.run(None, decode_feed(ids[:, t : t + 1], keys, values))
            assert keys.shape == (layers, 2, heads, t + 1, head_dim)
            diff = np.abs(logits - expected[:, t]).max()
            assert diff <= 1e-4, f"{storage} prompt {prompt}, position {t}: {diff}"


@pytest.mark.parametrize("storage", ["float16", "float32"])
def test_export_builds_the_cache_slots_graph(exported, storage):
    """The runtime's slot decode graph (runtime.decode_graph), built from this exporter's
    graph (whatever it names the tied embedding), gives torch's logits over the whole window
    at every step, a prompt read at once and then one token a call."""
    kind, checkpoint, folders, _ = exported
    if kind != "attention":
        pytest.skip("the Bengio model has no key/value cache")
    import onnxruntime as ort

    from runtime.decode_graph import build_decode_graph
    from runtime.slots import SlotCache

    model = _torch_model(checkpoint, storage)
    config = open_model(folders[storage]).card["config"]
    graph = build_decode_graph(folders[storage] / "model.onnx", config)
    session = ort.InferenceSession(graph, providers=["CPUExecutionProvider"])
    cache = SlotCache(session, 2, config)
    rng = np.random.default_rng(2)
    ids = rng.integers(0, config["vocab_size"], (2, config["context"]))
    with torch.no_grad():
        expected = model(torch.as_tensor(ids))[0].numpy()  # (B, T, V)
    logits = cache.step([0, 1], ids[:, :7].tolist())
    assert np.abs(logits - expected[:, 6]).max() <= 1e-4
    for t in range(7, config["context"]):
        logits = cache.step([0, 1], ids[:, t : t + 1].tolist())
        assert np.abs(logits - expected[:, t]).max() <= 1e-4, (storage, t)


def test_export_card_lists_the_decoder(exported):
    kind, _, folders, _ = exported
    graphs = json.loads((folders["float16"] / "card.json").read_text())["graphs"]
    if kind == "bengio":
        assert set(graphs) == {"model.onnx"}
        return
    decoder = graphs["decoder.onnx"]
    assert [i["name"] for i in decoder["inputs"]] == [
        "input_ids",
        "positions",
        "past_keys",
        "past_values",
        "attention_mask",
    ]
    assert [o["name"] for o in decoder["outputs"]] == ["logits", "present_keys", "present_values"]


def test_a_decoder_exported_before_positions_and_mask_still_serves(exported, tmp_path):
    """A model folder from before the decoder took positions and attention_mask: the service
    still generates with its cache (alone, not batched with other requests)."""
    kind, checkpoint, folders, _ = exported
    if kind != "attention":
        pytest.skip("the Bengio model has no key/value cache")
    import onnxruntime as ort

    from runtime.kv_cache import CachedContext

    class OldDecoder(torch.nn.Module):
        def __init__(self, model) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids, past_keys, past_values):
            return self.model.decode(input_ids, past_keys, past_values)

    model = _torch_model(checkpoint, "float32").eval()
    model.set_attention("matrix")
    config = model.config
    keys = torch.zeros(config.n_layer, 1, config.n_head, 3, config.d_model // config.n_head)
    cache = {1: "batch", 3: "past"}
    torch.onnx.export(
        OldDecoder(model),
        (torch.zeros(1, 2, dtype=torch.long), keys, keys.clone()),
        str(tmp_path / "decoder.onnx"),
        input_names=["input_ids", "past_keys", "past_values"],
        output_names=["logits", "present_keys", "present_values"],
        dynamic_axes={
            "input_ids": {0: "batch", 1: "sequence"},
            "past_keys": cache,
            "past_values": cache,
            "logits": {0: "batch"},
            "present_keys": {1: "batch", 3: "total"},
            "present_values": {1: "batch", 3: "total"},
        },
        opset_version=17,
        dynamo=False,
    )
    sessions = [
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        for path in (tmp_path / "decoder.onnx", folders["float32"] / "decoder.onnx")
    ]
    old, new = (CachedContext(session, config.context) for session in sessions)
    assert (old.masked, new.masked) == (False, True)
    ids = np.random.default_rng(3).integers(0, config.vocab_size, config.context + 5).tolist()
    for end in range(4, len(ids)):  # the prompt, then a token a call, past the context
        assert np.abs(old.next_logits(ids[:end]) - new.next_logits(ids[:end])).max() < 1e-4


def test_exported_graphs_quantize_to_int8_and_still_agree(exported):
    """The service's int8 pass takes every graph export writes: each loads, turns its weight
    products to integer ones, and gives logits close to float's (the tied head's weight must
    stay apart from the embedding lookup that shares it)."""
    import onnxruntime as ort

    from runtime.quantize import quantize_int8

    folder = exported[2]["float16"]
    rng = np.random.default_rng(2)
    card = json.loads((folder / "card.json").read_text())
    ids = rng.integers(0, card["config"]["vocab_size"], (2, 6))
    for graph in card["graphs"]:
        exact = ort.InferenceSession(str(folder / graph), providers=["CPUExecutionProvider"])
        blob = quantize_int8(folder / graph)
        int8 = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
        ops = {node.op_type for node in onnx.load_from_string(blob).graph.node}
        assert ops & {"MatMulInteger", "DynamicQuantizeMatMul"}, (graph, ops)
        if graph == "decoder.onnx":
            layers, heads = card["config"]["n_layer"], card["config"]["n_head"]
            empty = np.zeros((layers, 2, heads, 0, card["config"]["d_model"] // heads), "float32")
            feed = decode_feed(ids, empty, empty)
        else:
            feed = {"input_ids": ids, "positions": np.tile(np.arange(ids.shape[1]), (2, 1))}
        a, b = exact.run(None, feed)[0], int8.run(None, feed)[0]
        assert a.shape == b.shape and np.isfinite(b).all(), graph
        assert np.abs(a - b).max() < 0.1 * np.abs(a).max(), (graph, np.abs(a - b).max())


def test_onnx_runtime_fuses_every_gelu_with_its_bias(exported):
    """Each feed-forward GELU runs as one fused BiasGelu once ONNX Runtime has optimized a graph,
    as it did with the TorchScript exporter's graphs; spelled out as Erf and four elementwise
    passes (opset 18's export), the fusion does not take it."""
    kind, _, folders, _ = exported
    if kind != "attention":
        pytest.skip("the Bengio model has no GELU")
    folder = folders["float16"]
    layers = json.loads((folder / "card.json").read_text())["config"]["n_layer"]
    for graph in ("model.onnx", "attention.onnx", "decoder.onnx"):
        ops = runtime_ops(folder / graph)
        assert ops.count("BiasGelu") == layers and "Erf" not in ops, (graph, sorted(set(ops)))
