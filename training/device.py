"""The device a training runs on: CPU or CUDA, one process or several, and its precision.

bf16 autocast on CUDA and on CPUs that multiply bf16 natively (AVX512-BF16, AMX): where a CPU only
emulates bf16 it is slower than fp32, so ``auto`` keeps fp32 there. TF32 matrix products on CUDA.
On a CPU with glibc, tensors' memory stays with the process from step to step (keep_freed_memory).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform

import torch
import torch.distributed as dist

from runtime.hardware import cpu_info

PRECISIONS = ("auto", "bf16", "fp32")
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, from glibc's malloc.h
MALLOC_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")


def cpu_has_bf16() -> bool:
    """Whether the CPU multiplies bf16 natively (AVX512-BF16 or AMX); emulated bf16 is slower."""
    return bool(cpu_info()[1] & {"avx512_bf16", "amx_bf16"})


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> bf16 on CUDA and on CPUs with bf16 instructions, else fp32."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    return "bf16" if device.type == "cuda" or cpu_has_bf16() else "fp32"


def hardware(device: torch.device) -> str:
    """The GPU's name, or the CPU's with the threads torch uses."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = cpu_info()[0] or f"{platform.processor() or platform.machine()} CPU"
    threads = torch.get_num_threads()
    return f"{name}, {threads} thread{'s' if threads != 1 else ''}"


def autocast_for(
    device: torch.device, precision: str = "auto"
) -> contextlib.AbstractContextManager:
    """bf16 autocast where ``precision`` resolves to bf16 (see resolve_precision); else none."""
    if resolve_precision(precision, device) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def enable_tf32(device: torch.device) -> None:
    """TF32 matrix products and convolutions on CUDA (no effect elsewhere)."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def keep_freed_memory(device: torch.device) -> str:
    """On a CPU with glibc: serve blocks under 2 GiB from the heap and keep what is freed there,
    so that the next step reuses it; says what was done.

    By default glibc maps every block over its mmap threshold (at most 32 MiB) afresh and unmaps
    it when freed, and gives the heap's free top back to the system. A training step's logits and
    their gradients are such blocks (tiny presets: 32 MiB each), so every step had the kernel
    map and zero them again, page by page: on 2 CPU threads the tiny presets trained about twice
    as fast, and ``small`` a fifth to a half faster, once memory stayed (BENCHMARKS.md). The process
    keeps its peak memory instead of handing it back between steps. glibc's own variables in the
    environment (MALLOC_TRIM_THRESHOLD_, ...) win; other C libraries are left alone. No effect
    on CUDA, whose tensors PyTorch's caching allocator keeps already.
    """
    if device.type != "cpu":
        return "malloc: untouched (tensors on CUDA)"
    given = [name for name in MALLOC_VARIABLES if name in os.environ]
    if given or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return f"malloc: as the environment sets it ({', '.join(given) or 'GLIBC_TUNABLES'})"
    try:
        is_glibc = os.confstr("CS_GNU_LIBC_VERSION") is not None
    except (ValueError, OSError, AttributeError):
        is_glibc = False
    if not is_glibc:
        return "malloc: left to this C library (not glibc)"
    libc, limit = ctypes.CDLL(None), 2**31 - 1  # mallopt takes an int
    if libc.mallopt(M_MMAP_THRESHOLD, limit) != 1 or libc.mallopt(M_TRIM_THRESHOLD, limit) != 1:
        return "malloc: glibc refused the thresholds; its defaults stay"
    return "malloc: blocks under 2 GiB from the heap, freed memory kept for the next step"


def distributed() -> tuple[int, int]:
    """(rank, world size), joining the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def pick_device(name: str | None, rank: int, world: int) -> torch.device:
    """``name`` (cpu, cuda, cuda:1 ...) if given; else this process's GPU where there is one."""
    if name:
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)) if world > 1 else 0)
    return torch.device("cpu")
