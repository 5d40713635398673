"""The CPU image's install and start-up, outside Docker: docker/install-service.sh into a fresh
virtual environment (the `cpu` extra: plain onnxruntime, no torch), then the image's command."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import httpx
import pytest

from bench.common import start_server

pytestmark = pytest.mark.slow  # real weights on a real port, training runs, or a browser

ROOT = Path(__file__).resolve().parents[2]


def test_dockerfile_uses_the_tested_steps():
    """The image runs exactly what the test below runs: the install script and the command."""
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    assert "RUN sh docker/install-service.sh /opt/venv cpu /src" in dockerfile
    assert 'CMD ["machado-serve"]' in dockerfile
    assert 'RUN ["machado-serve", "--check", "--log-level", "warning"]' in dockerfile
    assert "MACHADO_PROVIDER=cpu" in dockerfile and "MACHADO_MODELS_DIR=/app/models" in dockerfile


def test_service_runs_on_plain_onnxruntime_without_torch(tmp_path):
    env_dir = tmp_path / "venv"
    install = subprocess.run(
        ["sh", str(ROOT / "docker" / "install-service.sh"), str(env_dir), "cpu", str(ROOT)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    if install.returncode != 0:
        pytest.fail(f"docker/install-service.sh failed: {install.stderr[-3000:]}")
    probe = subprocess.run(
        [
            str(env_dir / "bin" / "python"),
            "-c",
            "import onnxruntime, importlib.util as u; "
            "print(onnxruntime.get_available_providers(), u.find_spec('torch') is None)",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert "CPUExecutionProvider" in probe.stdout, probe.stdout + probe.stderr
    assert "CUDAExecutionProvider" not in probe.stdout, probe.stdout
    assert probe.stdout.strip().endswith("True"), "torch is importable"
    # The image's build step that checks its models, then its command.
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    check = subprocess.run(
        [str(env_dir / "bin" / "machado-serve"), "--check", "--log-level", "warning"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**clean, "MACHADO_MODELS_DIR": str(ROOT / "models"), "MACHADO_PROVIDER": "cpu"},
        timeout=120,
    )
    assert check.returncode == 0 and "3 of 3 models ok" in check.stdout, check.stdout + check.stderr
    # The image's environment (docker/Dockerfile), but on loopback and a free port.
    base, server = start_server(
        {"MACHADO_PROVIDER": "cpu"}, command=[str(env_dir / "bin" / "machado-serve")], cwd=tmp_path
    )
    try:
        models = httpx.get(f"{base}/models").json()["models"]
        assert {m["provider"] for m in models} == {"CPUExecutionProvider"}
        assert all("CPU asked for" in m["provider_reason"] for m in models)
        result = httpx.post(
            f"{base}/generate",
            timeout=60,
            json={"model": "attention", "prompt": "Capitu olhou", "max_new_tokens": 8},
        )
        assert result.status_code == 200 and result.json()["usage"]["completion_tokens"] >= 1
        page = httpx.get(f"{base}/")  # the playground ships inside the package
        assert page.status_code == 200 and "machado-lm" in page.text
        assert httpx.get(f"{base}/static/app.js").status_code == 200
    finally:
        server.terminate()
        server.wait(30)
