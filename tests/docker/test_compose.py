"""`docker compose up` for real: the images built and the stack run on a Docker engine, through
127.0.0.1 published ports only.

The base images come from scripts/docker_standins.sh (Debian's packages; no registry is
reachable here), passed as the build arguments the Dockerfiles take. The compose file runs as
it is, under docker-compose 1.29 (or Compose v2 where the engine has it). Skipped, saying why,
only where no Docker engine answers (scripts/test.sh starts one where it can)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
PROJECT = "machado-test"
STANDINS = {
    "PYTHON_IMAGE": "machado-standin/python:bookworm",
    "CUDA_IMAGE": "machado-standin/python:bookworm",
    "NGINX_IMAGE": "machado-standin/nginx:bookworm",
    "POSTGRES_IMAGE": "machado-standin/postgres:bookworm",
}

pytestmark = pytest.mark.slow


def engine_problem() -> str | None:
    if shutil.which("docker") is None:
        return "no docker client"
    done = subprocess.run(["docker", "info"], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return f"no Docker engine answers: {done.stderr.strip()[-200:]}"
    if compose_command() is None:
        return "neither docker-compose nor the docker compose plugin is installed"
    return None


def compose_command() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    done = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
    return ["docker", "compose"] if done.returncode == 0 else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_ports(count: int) -> int:
    """The first of ``count`` consecutive free loopback ports."""
    for first in range(38_000, 60_000, count):
        try:
            for port in range(first, first + count):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return first
    raise RuntimeError("no range of free ports")


class Stack:
    """The compose project, its environment (stand-ins, free ports) and helpers."""

    def __init__(self) -> None:
        # One port; a range of them for the replicas of --scale (as the README says).
        self.api_port, self.lb_port = free_ports(4), free_port()
        self.api_ports = f"127.0.0.1:{self.api_port}-{self.api_port + 3}"
        self.env = {  # the test process's MACHADO_* settings are not the stack's
            **{k: v for k, v in os.environ.items() if not k.startswith("MACHADO_")},
            **STANDINS,
            "COMPOSE_PROJECT_NAME": PROJECT,
            "MACHADO_PUBLISHED_PORT": f"127.0.0.1:{self.api_port}",
            "MACHADO_PUBLISHED_LB_PORT": f"127.0.0.1:{self.lb_port}",
        }
        self.base = f"http://127.0.0.1:{self.api_port}"
        self.lb = f"http://127.0.0.1:{self.lb_port}"

    def compose(self, *args: str, timeout: float = 600, check: bool = True, files=()) -> str:
        command = [*compose_command()]
        for file in ("docker-compose.yml", *files):
            command += ["-f", str(file)]
        done = subprocess.run(
            [*command, *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and done.returncode != 0:
            raise AssertionError(f"compose {' '.join(args)} failed: {done.stderr[-3000:]}")
        return done.stdout

    def containers(self, service: str) -> list[str]:
        return self.compose("ps", "-q", service).split()

    def inspect(self, container: str, template: str) -> str:
        return docker("inspect", "-f", template, container).strip()

    def wait_healthy(self, service: str, count: int = 1, seconds: float = 180) -> list[str]:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            ids = self.containers(service)
            states = [self.inspect(c, "{{.State.Health.Status}}") for c in ids]
            if len(ids) == count and all(s == "healthy" for s in states):
                return ids
            time.sleep(2)
        logs = self.compose("logs", "--tail", "30", service, check=False)
        raise AssertionError(f"{service} not healthy x{count} in {seconds} s: {states}\n{logs}")


def wait_ready(base: str, seconds: float) -> None:
    """Until ``base``/ready answers 200 (a server starting, or nginx finding its replicas)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/ready", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise AssertionError(f"{base}/ready did not answer 200 within {seconds} s")


def docker(*args: str, timeout: float = 120) -> str:
    done = subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed: {done.stderr[-2000:]}")
    return done.stdout


@pytest.fixture(scope="module")
def stack():
    problem = engine_problem()
    if problem:
        pytest.skip(f"Docker tests need an engine: {problem}")
    built = subprocess.run(
        ["bash", str(ROOT / "scripts" / "docker_standins.sh")],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    stack = Stack()
    stack.compose("down", "-v", "--remove-orphans", check=False)
    started = time.monotonic()
    stack.compose("build", "api", timeout=1200)
    stack.build_seconds = time.monotonic() - started
    yield stack
    stack.compose("--profile", "scale", "--profile", "gpu", "down", "-v", "--remove-orphans")


def test_compose_up_serves_the_api_the_openai_client_and_the_playground(stack):
    stack.compose("up", "-d", "api")
    [container] = stack.wait_healthy("api")
    ready = httpx.get(f"{stack.base}/ready", timeout=10).json()
    assert ready["ready"] and set(ready["models"]) == {"attention", "attention-seed", "bengio"}
    body = {"model": "attention", "prompt": "Capitu", "max_new_tokens": 8, "temperature": 0}
    generated = httpx.post(f"{stack.base}/generate", json=body, timeout=60)
    assert generated.status_code == 200 and generated.json()["usage"]["completion_tokens"] == 8

    from openai import OpenAI

    client = OpenAI(base_url=f"{stack.base}/v1", api_key="unused")
    chunks = list(
        client.completions.create(model="bengio", prompt="Capitu", max_tokens=8, stream=True)
    )
    assert len([c for c in chunks if c.choices and c.choices[0].text]) == 8
    page = httpx.get(f"{stack.base}/", timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert stack.inspect(container, "{{.State.Health.Status}}") == "healthy"


def test_container_runs_unprivileged_on_a_read_only_root(stack):
    stack.compose("up", "-d", "api")
    [container] = stack.wait_healthy("api")
    assert docker("exec", container, "id", "-u").strip() == "10001"
    wrote = subprocess.run(
        ["docker", "exec", container, "touch", "/app/models/x"], capture_output=True, check=False
    )
    assert wrote.returncode != 0
    assert b"Read-only file system" in wrote.stderr, wrote.stderr
    assert stack.inspect(container, "{{.HostConfig.ReadonlyRootfs}}") == "true"
    assert "no-new-privileges:true" in stack.inspect(container, "{{.HostConfig.SecurityOpt}}")


def test_stop_drains_a_stream_and_the_container_exits_0(stack):
    """`docker-compose stop` while a long generation streams: the stream ends with its own
    ending (done, or an error event saying the server shuts down), and the process exits 0."""
    stack.compose("up", "-d", "api")
    [container] = stack.wait_healthy("api")
    events: list[str] = []

    def stream() -> None:
        body = {"model": "attention", "prompt": "Capitu", "max_new_tokens": 512,
                "logit_bias": {"0": -100}, "stream": True}  # fmt: skip
        with httpx.stream("POST", f"{stack.base}/generate", json=body, timeout=60) as answer:
            events.extend(line for line in answer.iter_lines() if line.startswith("event:"))

    reader = threading.Thread(target=stream)
    reader.start()
    time.sleep(1.0)
    stopped = time.monotonic()
    stack.compose("stop", "api", timeout=60)
    reader.join(60)
    assert events and events[-1] in ("event: done", "event: error"), events[-3:]
    if events[-1] == "event: error":
        assert "shutting_down" in stack.compose("logs", "api")
    assert stack.inspect(container, "{{.State.ExitCode}}") == "0"
    assert time.monotonic() - stopped < 30
    logs = stack.compose("logs", "api")
    assert '"route": "/generate"' in logs, logs[-2000:]


def test_killed_server_is_restarted_by_the_engine(stack):
    stack.compose("up", "-d", "api")
    [container] = stack.wait_healthy("api")
    restarts = int(stack.inspect(container, "{{.RestartCount}}"))
    pid = int(stack.inspect(container, "{{.State.Pid}}"))
    os.kill(pid, signal.SIGKILL)  # the server process itself, from the host
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if int(stack.inspect(container, "{{.RestartCount}}")) > restarts:
            break
        time.sleep(1)
    assert int(stack.inspect(container, "{{.RestartCount}}")) == restarts + 1
    stack.wait_healthy("api")
    assert httpx.get(f"{stack.base}/ready", timeout=10).status_code == 200


def test_another_models_folder_mounted_read_only_is_served(stack, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(ROOT / "models" / "tokenizer.json", models)
    shutil.copytree(ROOT / "models" / "bengio", models / "bengio")
    models.chmod(0o755)
    for path in models.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    tmp_path.chmod(0o755)
    override = tmp_path / "override.yml"
    override.write_text(
        json.dumps({"services": {"api": {"volumes": [f"{models}:/app/models:ro"]}}})
    )
    try:
        stack.compose("up", "-d", "--force-recreate", "api", files=[override])
        stack.wait_healthy("api")
        ready = httpx.get(f"{stack.base}/ready", timeout=10).json()
        assert ready == {"ready": True, "models": {"bengio": "ready"}}
    finally:
        stack.compose("up", "-d", "--force-recreate", "api")


def test_scale_profile_spreads_requests_keeps_arms_and_survives_a_stopped_replica(stack):
    """Three replicas behind nginx, recording one A/B experiment in the profile's PostgreSQL."""
    stack.env["MACHADO_PUBLISHED_PORT"] = stack.api_ports
    stack.env["MACHADO_AB_STORE"] = "postgresql://machado:machado@ab-db/machado"
    stack.compose("--profile", "scale", "up", "-d", "--scale", "api=3", timeout=600)
    replicas = stack.wait_healthy("api", count=3)
    wait_ready(stack.lb, 60)
    body = {"model": "ab", "prompt": "Capitu", "max_new_tokens": 2, "temperature": 0}
    served, arms = set(), set()
    for _ in range(30):
        answer = httpx.post(
            f"{stack.lb}/generate", json=body, headers={"X-Client-Id": "reader-1"}, timeout=60
        )
        assert answer.status_code == 200, answer.text
        served.add(answer.headers["x-served-by"])
        arms.add(answer.headers["x-model"])
    assert len(served) == 3, served
    assert len(arms) == 1, arms  # one client, one arm, whichever replica answers
    # One experiment record for every replica: a reward reaches whichever replica the balancer
    # picks, for a request another one may have served, and every replica reports it.
    reward = {"request_id": answer.headers["x-request-id"], "reward": 1}
    assert httpx.post(f"{stack.lb}/ab/feedback", json=reward, timeout=60).status_code == 200
    again = httpx.post(f"{stack.lb}/ab/feedback", json=reward, timeout=60)
    assert again.status_code == 409, again.text
    for _ in range(6):
        report = httpx.get(f"{stack.lb}/ab", timeout=60).json()
        assert report["store"] == "postgresql", report
        assert sum(arm["reward"]["n"] for arm in report["arms"].values()) == 1, report["arms"]
    docker("stop", replicas[0], timeout=60)
    statuses = [
        httpx.post(f"{stack.lb}/next-token", json={"model": "bengio", "prompt": "Capitu"},
                   timeout=60).status_code
        for _ in range(30)
    ]  # fmt: skip
    assert statuses == [200] * 30, statuses
    stack.compose("--profile", "scale", "rm", "-s", "-f", "lb", "ab-db", timeout=120)
    stack.env["MACHADO_PUBLISHED_PORT"] = f"127.0.0.1:{stack.api_port}"
    stack.env.pop("MACHADO_AB_STORE")
    stack.compose("up", "-d", "--force-recreate", "--scale", "api=1", "api", timeout=300)


def test_gpu_image_builds_and_serves_on_the_cpu_saying_why(stack):
    """Built on the stand-in base (no CUDA libraries, no GPU), the GPU image starts, says in
    its log why it serves on the CPU, and answers."""
    stack.compose("--profile", "gpu", "build", "api-gpu", timeout=1800)
    name = f"{PROJECT}-gpu-check"
    port = free_port()
    docker("rm", "-f", name)
    docker("run", "-d", "--name", name, "--read-only", "--tmpfs", "/tmp",
           "-p", f"127.0.0.1:{port}:8000", "machado-lm:gpu")  # fmt: skip
    try:
        wait_ready(f"http://127.0.0.1:{port}", 120)
        models = httpx.get(f"http://127.0.0.1:{port}/models", timeout=10).json()["models"]
        assert {m["provider"] for m in models} == {"CPUExecutionProvider"}
        reason = models[0]["provider_reason"]
        assert "CUDA" in reason and "not usable here" in reason, reason
        logs = subprocess.run(["docker", "logs", name], capture_output=True, text=True, check=False)
        assert reason in logs.stdout + logs.stderr  # the service logs to stderr
    finally:
        docker("rm", "-f", name)


def test_down_leaves_nothing_of_the_project(stack):
    stack.compose("--profile", "scale", "--profile", "gpu", "down", "-v", "--remove-orphans")
    label = f"label=com.docker.compose.project={PROJECT}"
    assert docker("ps", "-aq", "--filter", label).strip() == ""
    assert docker("network", "ls", "-q", "--filter", label).strip() == ""
    assert docker("volume", "ls", "-q", "--filter", label).strip() == ""
