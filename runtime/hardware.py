"""What the CPU under the runtime is: its model name and instruction-set flags."""

from __future__ import annotations

import contextlib
import functools
import platform
from pathlib import Path


@functools.cache
def cpu_info() -> tuple[str, frozenset[str]]:
    """The CPU's model name and instruction-set flags (Linux /proc/cpuinfo; empty elsewhere)."""
    name, flags = "", frozenset()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and not name:
                name = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = frozenset(value.split())
    return name, flags


# The instruction sets that change speed figures: wide vectors, int8 dot products, bf16.
TOLD_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "avx512_bf16", "amx_bf16")


def cpu_label() -> str:
    """The CPU's model name and the instruction sets of TOLD_FLAGS it has: what a speed figure
    measured on it needs to be read by (Linux; elsewhere the platform's name)."""
    name, flags = cpu_info()
    told = " ".join(flag for flag in TOLD_FLAGS if flag in flags)
    name = name or platform.processor() or platform.machine()
    return name + (f", {told}" if told else "")
