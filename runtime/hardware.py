"""What the CPU under the runtime is: its model name and instruction-set flags."""

from __future__ import annotations

import contextlib
import functools
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
