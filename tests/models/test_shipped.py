"""The shipped models in models/: small enough, described by their cards, loadable without torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "models"
SHIPPED = ("attention", "attention-seed", "bengio")
# What a user of the service installs: the runtime, numpy and the tokenizer, nothing else.
RUNTIME_ONLY = ("onnxruntime==1.31.1", "numpy==2.4.6", "tokenizers==0.23.3", "onnx==1.23.2")


def _card(name: str) -> dict:
    return json.loads((MODELS / name / "card.json").read_text())


def test_shipped_models_present_with_cards():
    for name in SHIPPED:
        card = _card(name)
        assert card["name"] == name
        for split in ("validation", "test"):
            assert card["metrics"][split]["bits_per_character"] > 0, (name, split)
        assert card["training"]["command"].startswith("python -m training train")
        assert card["training"]["git_commit"] and card["training"]["hardware"]
    assert (MODELS / "README.md").is_file() and (MODELS / "curves.png").is_file()


def test_shipped_models_under_100_mb():
    total = sum(p.stat().st_size for p in MODELS.rglob("*") if p.is_file())
    assert total < 100 * 2**20, f"models/ holds {total / 2**20:.1f} MiB"


def test_shipped_attention_beats_bengio_on_test_bpc():
    attention = _card("attention")["metrics"]["test"]["bits_per_character"]
    bengio = _card("bengio")["metrics"]["test"]["bits_per_character"]
    assert attention < bengio, (attention, bengio)


def test_shipped_cards_record_the_checksums_of_their_files():
    """Every file of a shipped model that a runtime reads has its size and sha256 in the card,
    and they hold: a replaced graph or weights file fails here until its card says so."""
    from runtime.loader import file_problems

    for name in SHIPPED:
        card = _card(name)
        runtime_files = {p.name for p in (MODELS / name).iterdir() if p.suffix in (".onnx", ".bin")}
        assert set(card["files"]) == runtime_files, (name, sorted(card["files"]))
        assert file_problems(MODELS / name, card) == {}, name


def test_shipped_models_share_one_tokenizer():
    hashes = {_card(name)["tokenizer"]["sha256"] for name in SHIPPED}
    assert len(hashes) == 1


@pytest.mark.slow
def test_shipped_models_load_without_torch(tmp_path):
    """A fresh virtual environment with only onnxruntime, numpy and tokenizers runs every model."""
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    install = subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            *RUNTIME_ONLY,
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if install.returncode != 0:
        pytest.fail(f"pip could not install {RUNTIME_ONLY}: {install.stderr[-2000:]}")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    result = subprocess.run(
        [str(python), "-m", "runtime.check", str(MODELS)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    torch = subprocess.run(
        [str(python), "-c", "import importlib.util; print(importlib.util.find_spec('torch'))"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert torch.stdout.strip() == "None", torch.stdout
    for name in SHIPPED:
        assert f"{name}: " in result.stdout
    assert sys.executable != str(python)
