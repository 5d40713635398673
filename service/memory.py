"""The process's C allocator: few glibc malloc arenas for a server with many request threads.

glibc gives each new thread that allocates an arena of its own, up to eight per core, and memory
freed in an arena stays with it. The service runs requests on a pool of worker threads that
allocate logits, caches and numpy temporaries of every size, so by default each thread's arena
grows to its own peak. Two arenas held 70-80 MiB less in the 420 s load runs at the same throughput
(BENCHMARKS.md, load run).
"""

from __future__ import annotations

import ctypes
import os
import threading

M_ARENA_MAX = -8  # from glibc's malloc.h


def glibc() -> bool:
    try:
        return os.confstr("CS_GNU_LIBC_VERSION") is not None
    except (ValueError, OSError, AttributeError):  # not a glibc system
        return False


def limit_malloc_arenas(arenas: int) -> str:
    """Cap glibc's malloc arenas at ``arenas`` for the threads started from now on (mallopt
    M_ARENA_MAX), and say what was done: 0 leaves glibc's default, and MALLOC_ARENA_MAX in the
    environment, which glibc read at start-up, wins."""
    if (given := os.environ.get("MALLOC_ARENA_MAX")) is not None:
        return f"malloc arenas: MALLOC_ARENA_MAX={given} from the environment"
    if arenas == 0:
        return "malloc arenas: glibc's default (8 per core)"
    if not glibc():
        return "malloc arenas: left to this C library (not glibc)"
    if ctypes.CDLL(None).mallopt(M_ARENA_MAX, arenas) != 1:
        return f"malloc arenas: glibc refused a limit of {arenas}; its default stays"
    return f"malloc arenas: at most {arenas}"


# An answer of more than this many bytes returns the allocator's free memory to the system once
# it is sent: building it took several times its size in Python objects and arrays.
TRIM_AFTER_BYTES = 1 << 20
_trimming = threading.Lock()


def release_free_memory() -> None:
    """glibc's malloc_trim(0): the free pages of every arena go back to the system, so that a
    burst of large answers does not leave the process holding its peak for good. One trim at a
    time (a second caller returns at once); nothing outside glibc."""
    if not glibc() or not _trimming.acquire(blocking=False):
        return
    try:
        ctypes.CDLL(None).malloc_trim(0)
    finally:
        _trimming.release()
