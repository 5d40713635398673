"""The device a training runs on: CPU or CUDA, one process or several, and its precision.

bf16 autocast on CUDA and on CPUs that multiply bf16 natively (AVX512-BF16, AMX): where a CPU only
emulates bf16 it is slower than fp32, so ``auto`` keeps fp32 there. TF32 matrix products on CUDA.
"""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path

import torch
import torch.distributed as dist

PRECISIONS = ("auto", "bf16", "fp32")


def cpu_info() -> tuple[str, set[str]]:
    """The CPU's model name and instruction-set flags (Linux /proc/cpuinfo; empty elsewhere)."""
    name, flags = "", set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and not name:
                name = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    return name, flags


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
