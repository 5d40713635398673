"""Service fixtures: the shipped models behind a test client, with small limits."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from runtime.options import LoadOptions
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


def make_options(**changes) -> LoadOptions:
    """How the runtime loads the models under the test settings with ``changes``."""
    return make_settings(**changes).load_options()


def context_of(client: TestClient, model: str) -> int:
    """A shipped model's context, as /models reports it (the tests follow the models)."""
    models = {m["name"]: m for m in client.get("/models").json()["models"]}
    return models[model]["context"]


@contextmanager
def every_slot_taken(client: TestClient) -> Iterator[None]:
    """The service as if max_concurrency requests ran and no more might wait: the next
    inference request is turned away."""
    admission = client.app.state.admission
    saved = admission.running, admission.queue
    admission.running, admission.queue = admission.slots, 0
    try:
        yield
    finally:
        admission.running, admission.queue = saved


@pytest.fixture(scope="session")
def client():
    with TestClient(create_app(make_settings())) as test_client:
        yield test_client


def start_server(
    env_changes: dict[str, str] | None = None,
    command: list[str] | None = None,
    cwd: Path | None = None,
):
    """The service on a free loopback port: (base URL, process), once /ready answers.

    ``command`` replaces `python -m service` (it gets the address from MACHADO_HOST and
    MACHADO_PORT); ``env_changes`` are added to the environment.
    """
    import os
    import socket
    import subprocess
    import sys
    import tempfile
    import time

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(
        {
            "MACHADO_LOG_FORMAT": "json",
            "MACHADO_HOST": "127.0.0.1",
            "MACHADO_PORT": str(port),
            "MACHADO_MODELS_DIR": str(MODELS),
            **(env_changes or {}),
        }
    )
    # Output to a file, not a pipe: nobody reads a pipe while the server runs, and a full pipe
    # would block the server's logging.
    log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)  # noqa: SIM115
    proc = subprocess.Popen(
        command or [sys.executable, "-m", "service"],
        cwd=cwd or MODELS.parent,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    proc.log_path = Path(log.name)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"{base}/ready", timeout=1).status_code == 200:
                return base, proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"server did not become ready: {proc.log_path.read_text()[-3000:]}")
