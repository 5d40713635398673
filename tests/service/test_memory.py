"""The process's malloc arenas: capped by the service at start-up, in a fresh process each."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.memory import glibc
from tests.service.conftest import make_settings

ROOT = Path(__file__).resolve().parents[2]

# Eight threads allocate at once; glibc's malloc_info then lists one <heap> per arena in use.
COUNT_ARENAS = textwrap.dedent(
    """
    import ctypes, sys, tempfile, threading
    from service.memory import limit_malloc_arenas

    print(limit_malloc_arenas(int(sys.argv[1])))
    barrier, held = threading.Barrier(9), []

    def work():
        held.append(bytearray(65536))
        barrier.wait()
        barrier.wait()

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    barrier.wait()
    libc = ctypes.CDLL(None)
    libc.fopen.restype = ctypes.c_void_p
    with tempfile.NamedTemporaryFile("r") as out:
        stream = ctypes.c_void_p(libc.fopen(out.name.encode(), b"w"))
        libc.malloc_info(0, stream)
        libc.fclose(stream)
        print(out.read().count("<heap nr="))
    barrier.wait()
    """
)


def arenas_in_use(setting: int, environment: dict[str, str] | None = None) -> tuple[str, int]:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"} | (environment or {})
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run(
        [sys.executable, "-c", COUNT_ARENAS, str(setting)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.splitlines()
    return out[0], int(out[1])


pytestmark = pytest.mark.skipif(not glibc(), reason="malloc arenas are glibc's")


def test_default_glibc_gives_threads_arenas_of_their_own():
    said, arenas = arenas_in_use(0)
    assert "default" in said
    assert arenas > 2  # what the limit is for: on 2 cores glibc allows 16


@pytest.mark.parametrize("limit", [1, 2])
def test_limit_caps_the_arenas(limit):
    said, arenas = arenas_in_use(limit)
    assert said == f"malloc arenas: at most {limit}"
    assert arenas <= limit


def test_environment_wins_over_the_setting():
    said, arenas = arenas_in_use(4, {"MALLOC_ARENA_MAX": "1"})
    assert "MALLOC_ARENA_MAX=1" in said
    assert arenas == 1


def test_service_sets_the_limit_before_loading_models(caplog, monkeypatch):
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    app = create_app(make_settings(malloc_arenas=3))
    with caplog.at_level(logging.INFO, logger="service.app"), TestClient(app) as client:
        assert client.get("/ready").status_code == 200
    messages = [r.getMessage() for r in caplog.records if r.name == "service.app"]
    assert messages[0] == "malloc arenas: at most 3"


@pytest.mark.slow
def test_stopped_service_releases_its_models():
    """Once stopped, an app holds no session: FastAPI's caches of endpoint functions can keep the
    app object itself alive, and with it every model's weights and threads, were they kept."""
    import gc
    import weakref

    app = create_app(make_settings())
    with TestClient(app) as client:
        assert client.get("/ready").status_code == 200
        sessions = [
            weakref.ref(session)
            for model in app.state.models.values()
            for session in (model.session, model.attention_session, model.decoder_session)
            if session is not None
        ]
        assert len(sessions) >= 3
    gc.collect()
    assert app.state.engines == {} and app.state.models == {}
    assert [ref for ref in sessions if ref() is not None] == []
    with TestClient(app) as client:  # started again, it loads them again
        assert client.get("/ready").status_code == 200
        assert client.post("/next-token", json={"model": "bengio", "prompt": "Capitu"}).is_success
