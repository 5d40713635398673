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
        ab_store="sqlite:///:memory:",  # each app its own record, gone with it
    )
    fields.update(changes)
    return Settings(**fields)


def make_options(**changes) -> LoadOptions:
    """How the runtime loads the models under the test settings with ``changes``."""
    return make_settings(**changes).load_options()


def error_of(response, status: int, type_: str, field: str | None = None) -> dict:
    """The error body of ``response``, checked: its status, type, a message, and its field."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["type"] == type_, error
    assert error["message"]
    if field is not None:
        assert error["field"] == field, error
    return error


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


@pytest.fixture(scope="session")
def postgres_url():
    """A fresh database on a real PostgreSQL server: Debian's cluster, started here as root
    (scripts/test.sh installs the package); skipped, saying why, where it cannot be had."""
    import os
    import secrets
    import shutil
    import subprocess

    if shutil.which("pg_ctlcluster") is None or shutil.which("pg_lsclusters") is None:
        pytest.skip("PostgreSQL is not installed (scripts/test.sh installs it when run as root)")
    if os.geteuid() != 0:
        pytest.skip("starting Debian's PostgreSQL cluster needs root")
    clusters = subprocess.run(["pg_lsclusters", "-h"], capture_output=True, text=True).stdout
    if not clusters.strip():
        versions = sorted(os.listdir("/usr/lib/postgresql"))
        subprocess.run(["pg_createcluster", versions[-1], "main"], check=True, capture_output=True)
        clusters = subprocess.run(["pg_lsclusters", "-h"], capture_output=True, text=True).stdout
    version, name, port = clusters.split()[:3]
    subprocess.run(["pg_ctlcluster", version, name, "start"], capture_output=True)  # 2: running

    def psql(sql: str) -> None:
        command = ["runuser", "-u", "postgres", "--", "psql", "-p", port, "-v", "ON_ERROR_STOP=1"]
        subprocess.run([*command, "-c", sql], check=True, capture_output=True, text=True)

    database, password = f"machado_test_{secrets.token_hex(4)}", secrets.token_hex(8)
    psql(
        "DO $$ BEGIN CREATE ROLE machado_test LOGIN; EXCEPTION WHEN duplicate_object THEN "
        "NULL; END $$"
    )
    psql(f"ALTER ROLE machado_test PASSWORD '{password}'")
    psql(f"CREATE DATABASE {database} OWNER machado_test")
    yield f"postgresql://machado_test:{password}@127.0.0.1:{port}/{database}"
    psql(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
