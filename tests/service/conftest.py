"""Service fixtures: the shipped models behind a test client, with small limits."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings

MODELS = Path(__file__).resolve().parents[2] / "models"


def make_settings(**changes) -> Settings:
    fields = dict(
        models_dir=MODELS,
        threads=2,
        max_new_tokens=32,
        max_prompt_chars=2000,
        max_score_chars=5000,
        max_concurrency=4,
        request_timeout_s=20.0,
        max_body_bytes=64_000,
        log_format="text",
    )
    fields.update(changes)
    return Settings(**fields)


@pytest.fixture(scope="session")
def client():
    with TestClient(create_app(make_settings())) as test_client:
        yield test_client


def start_server(env_changes: dict[str, str] | None = None):
    """`python -m service` on a free loopback port: (base URL, process), once /ready answers."""
    import os
    import socket
    import subprocess
    import sys
    import time

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "MACHADO_LOG_FORMAT": "json", **(env_changes or {})}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "service",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--models-dir",
            str(MODELS),
        ],
        cwd=MODELS.parent,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/ready", timeout=1).status_code == 200:
                return base, proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"server did not become ready: {proc.stdout.read()[-3000:]}")
