"""The README's API examples, run as a reader would paste them, against a live server: an
example that drifts from the API fails here."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from bench.common import start_server

pytestmark = pytest.mark.slow  # a real server on a real port

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
SECTION = README[README.index("## Using the API") : README.index("## Deployment")]


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", SECTION, re.S)


def curl_commands() -> list[str]:
    """Each curl command of the section's bash blocks, continuation lines joined."""
    commands = []
    for block in blocks("bash"):
        joined = re.sub(r"\\\n\s*", " ", block)
        commands += [line for line in joined.splitlines() if line.startswith("curl ")]
    return commands


def test_readme_has_an_example_of_every_endpoint():
    """One example per endpoint the README's API section promises."""
    shown = " ".join(blocks("bash")) + " ".join(blocks("python"))
    for path in ("/generate", "/next-token", "/attention", "/score", "/compare", "/tokenize",
                 "/detokenize", "/models", "/ab", "/ab/feedback", "/ab/export", "/health",
                 "/ready", "/metrics"):  # fmt: skip
        assert f"localhost:8000{path}" in shown, path
    assert "completions.create" in shown and "models.list" in shown


@pytest.fixture(scope="module")
def server():
    base, proc = start_server(
        {"MACHADO_LOG_FORMAT": "text", "MACHADO_AB_STORE": "sqlite:///:memory:"}
    )
    yield base
    proc.terminate()
    proc.wait(timeout=30)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
@pytest.mark.parametrize("command", curl_commands())
def test_readme_curl_example_answers(server, command):
    """Each curl example gets a 2xx answer whose body is what the endpoint promises: JSON, a
    stream of events ending in done, or Prometheus text."""
    command = command.replace("localhost:8000", server.removeprefix("http://"))
    command = command.replace("curl ", "curl --fail-with-body ", 1)
    run = subprocess.run(command, shell=True, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, (command, run.stdout[-2000:], run.stderr[-2000:])
    if '"stream": true' in command:
        assert "event: token" in run.stdout and "event: done" in run.stdout, run.stdout
    elif "/metrics" in command:
        assert "machado_requests_total" in run.stdout, run.stdout[:500]
    elif "format=csv" in command:
        assert run.stdout.startswith("request_id"), run.stdout[:500]
    else:
        body = json.loads(run.stdout)
        assert body.get("error") is None, body


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_readme_experiment_runs_to_a_verdict(server):
    """The A/B block, run whole as a shell script: 40 rewards taken, and GET /ab compares the
    arms with a verdict."""
    [script] = [block for block in blocks("bash") if "/ab/feedback" in block]
    script = script.replace("localhost:8000", server.removeprefix("http://"))
    script = script.replace("curl -s ", "curl -s --fail-with-body ")
    run = subprocess.run(["bash", "-e", "-c", script], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count('"reward":') >= 40, run.stdout[:2000]
    report = httpx.get(f"{server}/ab", timeout=30).json()
    assert sum(arm["reward"]["n"] for arm in report["arms"].values()) >= 40
    assert all("verdict" in c for c in report["comparisons"].values()), report["comparisons"]


def test_readme_python_example_runs(server):
    """The openai-client example prints each model's score of both texts."""
    [code] = blocks("python")
    code = code.replace("http://127.0.0.1:8000", server)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.strip().splitlines()
    assert "attention" in lines[0] and len(lines) == 7, lines
    assert all(float(line.rsplit(" ", 1)[1]) < 0 for line in lines[1:]), lines
