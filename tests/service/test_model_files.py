"""A model folder whose files are not those its card records is refused, saying which file and
how it differs, before ONNX Runtime reads it: a damaged weights file would otherwise load and
answer nonsense, and a truncated one fail with a message about ONNX Runtime's internals. Only a
damaged key/value cache graph leaves the model serving, without its cache."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
from fastapi.testclient import TestClient

from runtime.engine import Engine
from runtime.loader import file_problems, load_models
from runtime.results import GenerationRequest
from service.app import create_app
from tests.service.conftest import MODELS, make_options, make_settings

NAME = "attention-seed"  # the smallest shipped model with all three graphs


@pytest.fixture
def folder(tmp_path):
    """A copy of a shipped model folder (and the tokenizer beside it), free to damage."""
    shutil.copy(MODELS / "tokenizer.json", tmp_path / "tokenizer.json")
    return shutil.copytree(MODELS / NAME, tmp_path / NAME)


def card_of(folder) -> dict:
    return json.loads((folder / "card.json").read_text())


def refusal(folder) -> str:
    """The card's own problem, which refuses the model whatever its files."""
    with pytest.raises(ValueError) as caught:
        file_problems(folder, card_of(folder))
    return str(caught.value)


def test_model_files_as_the_card_records_them_pass(folder):
    assert file_problems(folder, card_of(folder)) == {}


def test_model_files_damaged_weights_are_refused_by_their_hash(folder):
    """Bytes changed in place, the size as before: only the hash can tell."""
    weights = folder / "weights.bin"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x40
    weights.write_bytes(data)
    [(name, message)] = file_problems(folder, card_of(folder)).items()
    assert name == "weights.bin" and message.startswith("weights.bin has sha256 "), message
    assert "damaged or comes from another export" in message, message


def test_model_files_truncated_weights_are_refused_by_their_size(folder):
    weights = folder / "weights.bin"
    size = weights.stat().st_size
    with weights.open("r+b") as stream:
        stream.truncate(size // 3)
    message = file_problems(folder, card_of(folder))["weights.bin"]
    assert message.startswith(f"weights.bin has {size // 3:,} bytes, the card records {size:,}")
    assert "Git LFS pointer" in message, message


def test_model_files_a_missing_graph_is_named(folder):
    (folder / "attention.onnx").unlink()
    problems = file_problems(folder, card_of(folder))
    assert problems == {"attention.onnx": f"attention.onnx is missing from {NAME}/"}


def test_model_files_the_card_must_cover_every_file_read(folder):
    card = card_of(folder)
    del card["files"]["weights.bin"]
    (folder / "card.json").write_text(json.dumps(card))
    assert refusal(folder) == "the card records no checksum for weights.bin"


@pytest.mark.parametrize("listed", ["../tokenizer.json", "/etc/hostname"])
def test_model_files_outside_the_folder_are_refused(folder, listed):
    """A card names files of its own folder only: the check reads nothing elsewhere."""
    card = card_of(folder)
    card["files"][listed] = {"bytes": 1, "sha256": "0" * 64}
    (folder / "card.json").write_text(json.dumps(card))
    assert refusal(folder) == f"the card lists {listed!r}, which is not a file of {NAME}/"


def test_model_files_a_card_without_checksums_loads_unchecked_and_says_so(folder, caplog):
    """Folders exported before cards had checksums still load; the log says they are unchecked
    and how to record them."""
    card = card_of(folder)
    del card["files"]
    with caplog.at_level(logging.WARNING, logger="runtime.folder"):
        assert file_problems(folder, card) == {}
    [record] = [r for r in caplog.records if r.name == "runtime.folder"]
    assert "records no checksums" in record.getMessage(), record.getMessage()
    assert f"python -m training checksums {folder}" in record.getMessage()


def test_model_files_a_damaged_model_is_not_served(folder):
    """The service starts without the model, and /ready, /models and a request to it say why."""
    weights = folder / "weights.bin"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(data)
    with TestClient(create_app(make_settings(models_dir=folder.parent))) as client:
        ready = client.get("/ready")
        assert ready.status_code == 503
        assert "weights.bin has sha256" in ready.json()["models"][NAME], ready.json()
        [model] = client.get("/models").json()["models"]
        assert model["status"] == "failed" and "weights.bin has sha256" in model["error"]
        answer = client.post("/generate", json={"model": NAME, "prompt": "Capitu"})
        assert answer.status_code == 503, answer.text
        assert "weights.bin has sha256" in answer.json()["error"]["message"]


def test_model_files_a_damaged_cache_graph_leaves_the_model_serving_without_it(tmp_path, caplog):
    """The key/value cache graph only makes generation faster: damaged, it is left out with a
    warning that says how, and the model generates a window a token."""
    shutil.copy(MODELS / "tokenizer.json", tmp_path / "tokenizer.json")
    folder = shutil.copytree(MODELS / "attention", tmp_path / "attention")
    graph = folder / "decoder.onnx"
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0x01
    graph.write_bytes(data)
    with caplog.at_level(logging.WARNING, logger="runtime.loader"):
        model = load_models(make_options(models_dir=tmp_path))["attention"]
    assert model.ready and model.decoder_session is None
    assert "key/value cache graph did not load" in caplog.text
    assert "decoder.onnx has sha256" in caplog.text, caplog.text
    steps = list(Engine(model).generate(GenerationRequest("Capitu", 3, seed=0)))
    assert len(steps[-1].steps) == 3


def test_model_files_models_says_whether_they_were_checked(folder):
    """/models tells a checked model from one whose card records no checksums."""
    shutil.copytree(MODELS / "bengio", folder.parent / "bengio")
    card = card_of(folder)
    del card["files"]
    (folder / "card.json").write_text(json.dumps(card))
    with TestClient(create_app(make_settings(models_dir=folder.parent))) as client:
        listed = {m["name"]: m for m in client.get("/models").json()["models"]}
    assert listed[NAME]["status"] == listed["bengio"]["status"] == "ready"
    assert (listed[NAME]["files_checked"], listed["bengio"]["files_checked"]) == (False, True)
