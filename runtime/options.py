"""How the runtime opens a models directory (no ONNX Runtime import: settings read it cheaply)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal


@dataclass(frozen=True)
class LoadOptions:
    """How to open a models directory's graphs."""

    models_dir: Path  # nothing is read from outside it
    threads: int = 2  # ONNX Runtime's intra-op threads per session
    thread_spin_us: int = 0  # idle intra-op threads spin this long before sleeping; -1: ORT default
    provider: Literal["auto", "cuda", "cpu"] = "cpu"  # auto: CUDA where usable, else CPU
    quantize: Literal["none", "int8"] = "none"  # int8 weights on the CPU provider
    kv_cache: bool = True  # load the key/value cache graph where the context makes it pay
    kv_slots: int = 16  # sequences the cache slots of an attention model hold (0: no slots)
    draft_tokens: int = 6  # guessed for a lone greedy generation (runtime.speculation; 0: none)
    cuda_tf32: bool = False  # TF32 matrix products on CUDA (faster, logits drift past 1e-3)
