"""The allocator setting of CPU training (training.device.keep_freed_memory)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from training import device as device_module
from training.device import M_MMAP_THRESHOLD, M_TRIM_THRESHOLD, keep_freed_memory


def _glibc() -> bool:
    try:
        return os.confstr("CS_GNU_LIBC_VERSION") is not None
    except (ValueError, OSError, AttributeError):
        return False


class FakeLibc:
    def __init__(self, answer: int = 1) -> None:
        self.calls: list[tuple[int, int]] = []
        self.answer = answer

    def mallopt(self, parameter: int, value: int) -> int:
        self.calls.append((parameter, value))
        return self.answer


@pytest.fixture
def libc(monkeypatch):
    fake = FakeLibc()
    monkeypatch.setattr(device_module.ctypes, "CDLL", lambda _name: fake)
    for name in (*device_module.MALLOC_VARIABLES, "GLIBC_TUNABLES"):
        monkeypatch.delenv(name, raising=False)
    return fake


@pytest.mark.skipif(not _glibc(), reason="mallopt is glibc's")
def test_cpu_training_raises_both_thresholds(libc):
    said = keep_freed_memory(torch.device("cpu"))
    assert libc.calls == [(M_MMAP_THRESHOLD, 2**31 - 1), (M_TRIM_THRESHOLD, 2**31 - 1)]
    assert "kept" in said


@pytest.mark.skipif(not _glibc(), reason="mallopt is glibc's")
def test_a_refusal_is_said(libc):
    libc.answer = 0
    assert "refused" in keep_freed_memory(torch.device("cpu"))


def test_cuda_and_the_environment_are_left_alone(libc, monkeypatch):
    assert "untouched" in keep_freed_memory(torch.device("cuda"))
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "131072")
    assert "MALLOC_TRIM_THRESHOLD_" in keep_freed_memory(torch.device("cpu"))
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_")
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=65536")
    assert "GLIBC_TUNABLES" in keep_freed_memory(torch.device("cpu"))
    assert libc.calls == []


PAGE_FAULTS = textwrap.dedent(
    """
    import resource, sys, torch
    from training.device import keep_freed_memory
    if sys.argv[1] == "keep":
        keep_freed_memory(torch.device("cpu"))
    for _ in range(10):  # the first steps' 64 MiB blocks, each freed before the next
        torch.ones(16, 2**20)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):  # ten more steps' worth
        torch.ones(16, 2**20)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """
)


@pytest.mark.slow
@pytest.mark.skipif(not _glibc(), reason="mallopt is glibc's")
def test_kept_memory_is_reused_without_page_faults():
    """glibc's defaults map a 64 MiB tensor afresh each time: 16,384 page faults a time. Kept, the
    freed blocks are reused once the heap has grown to fit (a few blocks: PyTorch asks for aligned
    memory, which a freed block of the same size cannot always give)."""
    env = {k: v for k, v in os.environ.items() if k not in device_module.MALLOC_VARIABLES}
    faults = {
        mode: int(
            subprocess.run(
                [sys.executable, "-c", PAGE_FAULTS, mode],
                capture_output=True,
                text=True,
                check=True,
                env=env,
            ).stdout
        )
        for mode in ("default", "keep")
    }
    # 4 KiB pages: 163,840 faults against none here (fewer with transparent huge pages).
    assert faults["keep"] * 10 < faults["default"], faults
