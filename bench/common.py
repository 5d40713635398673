"""What every benchmark shares: the machine it ran on, the prompt text, percentiles, timing,
a served instance on a free port, and JSON out."""

from __future__ import annotations

import json
import os
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from runtime.hardware import cpu_label

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
TEXT = "Não tive filhos, não transmiti a nenhuma criatura o legado da nossa miséria. " * 12
# The command line that ran the benchmark, as `python -m bench` received it (bench.__main__).
COMMAND: list[str] = []


def cpu_name() -> str:
    """The CPU's model name, cores and the instruction sets that change speed figures."""
    return f"{cpu_label()}, {os.cpu_count()} cores"


def gpu_name() -> str | None:
    """The first NVIDIA GPU's name and driver version, where nvidia-smi answers; None
    elsewhere."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    names = out.stdout.strip().splitlines()
    return names[0] if out.returncode == 0 and names else None


def machine() -> dict[str, str | None]:
    """What a figure was measured on."""
    return {"cpu": cpu_name(), "gpu": gpu_name()}


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_ms": statistics.median(ordered),
        "p99_ms": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
        "n": len(ordered),
    }


def timed(fn: Callable[[], object], n: int, warmup: int = 5) -> list[float]:
    """Milliseconds of each of ``n`` calls of ``fn``, after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    return samples


def prompt_of(tokens: int, models_dir: Path) -> str:
    """A prompt that is exactly ``tokens`` tokens after the end-of-text token."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(models_dir / "tokenizer.json"))
    ids = tokenizer.encode(TEXT, add_special_tokens=False).ids[: tokens - 1]
    return tokenizer.decode(ids)


def write_figures(result: dict, path: Path | None) -> None:
    """The benchmark's figures as JSON at ``path`` (none: not written), with the machine and
    the command that measured them."""
    if path is None:
        return
    result.setdefault("machine", machine())
    if COMMAND:
        result.setdefault("command", shlex.join(["python", "-m", "bench", *COMMAND]))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")


def start_server(
    env_changes: dict[str, str] | None = None,
    command: list[str] | None = None,
    cwd: Path | None = None,
    models_dir: Path = MODELS,
):
    """The service on a free loopback port: (base URL, process), once /ready answers.

    ``command`` replaces `python -m service` (it gets the address from MACHADO_HOST and
    MACHADO_PORT); ``env_changes`` are added to the environment. The process writes to a file
    (``proc.log_path``), not a pipe: nobody reads a pipe while the server runs, and a full pipe
    would block its logging.
    """

    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(
        {
            "MACHADO_LOG_FORMAT": "json",
            "MACHADO_HOST": "127.0.0.1",
            "MACHADO_PORT": str(port),
            "MACHADO_MODELS_DIR": str(models_dir),
            **(env_changes or {}),
        }
    )
    log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)  # noqa: SIM115
    proc = subprocess.Popen(
        command or [sys.executable, "-m", "service"],
        cwd=cwd or ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    proc.log_path = Path(log.name)
    base = f"http://127.0.0.1:{port}"
    wait_until_ready(proc, f"{base}/ready")
    return base, proc


def free_port() -> int:
    """A loopback port nobody listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_ready(proc: subprocess.Popen, url: str, seconds: float = 60) -> None:
    """Until ``url`` answers 200; the process killed and its log (``proc.log_path``) raised
    where it does not within ``seconds`` or dies first."""
    import httpx

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"{url} did not answer: {proc.log_path.read_text()[-3000:]}")
