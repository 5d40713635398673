"""What the service asks of ONNX Runtime's CUDA provider: exact float32 unless told otherwise."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort
import pytest

from runtime import loader as registry
from runtime.loader import CPU, CUDA, ProviderChoice, load_model
from service.settings import Settings

MODELS = Path(__file__).resolve().parents[2] / "models"


@pytest.fixture
def asked(monkeypatch) -> list:
    """The providers of every session the registry opens; the sessions themselves run on the
    CPU, since this machine may have no GPU."""
    providers_asked: list = []
    real = ort.InferenceSession

    def recording(source, options, providers):
        providers_asked.append(providers)
        return real(source, options, providers=[CPU])

    monkeypatch.setattr(registry.ort, "InferenceSession", recording)
    return providers_asked


@pytest.mark.parametrize(("tf32", "expected"), [(False, "0"), (True, "1")])
def test_cuda_provider_gets_use_tf32_from_the_setting(asked, tf32, expected):
    """TF32 moved the attention model's logits 1.8e-2 from the CPU's on an H200, beyond the
    1e-3 the provider check allows: it is off unless MACHADO_CUDA_TF32 turns it on."""
    settings = Settings(models_dir=MODELS, provider="cuda", cuda_tf32=tf32)
    options = settings.load_options()
    model = load_model(MODELS / "bengio", options, {}, ProviderChoice([CUDA, CPU], "test"))
    assert model.ready, model.error
    assert asked and all(p == [(CUDA, {"use_tf32": expected}), CPU] for p in asked)


def test_cpu_provider_is_asked_for_by_name_alone(asked):
    settings = Settings(models_dir=MODELS, provider="cpu")
    options = settings.load_options()
    model = load_model(MODELS / "bengio", options, {}, ProviderChoice([CPU], "test"))
    assert model.ready, model.error
    assert asked == [[CPU]]
