"""A/B routing: `model: "ab"` picks an arm by configured weights, sticky per client.

A client id hashes to a point in [0, 1) and the point to an arm, so the same client lands on the
same arm in every replica without shared state; without an id the point is random.
"""

from __future__ import annotations

import hashlib
import random
import threading
from collections import deque
from dataclasses import dataclass, field

import numpy as np

AB_MODEL = "ab"


def parse_weights(text: str, available: list[str]) -> dict[str, float]:
    """'attention=50,bengio=50' -> normalised weights; empty text: all available, equal."""
    if not text.strip():
        if not available:
            return {}
        return {name: 1 / len(available) for name in available}
    weights: dict[str, float] = {}
    for part in text.split(","):
        name, sep, value = part.strip().partition("=")
        if not sep:
            raise ValueError(f"A/B weight {part!r} is not NAME=WEIGHT")
        try:
            weight = float(value)
        except ValueError:
            raise ValueError(f"A/B weight of {name!r} is not a number: {value!r}") from None
        if weight < 0 or weight != weight:
            raise ValueError(f"A/B weight of {name!r} must be >= 0, got {value}")
        if name not in available:
            raise ValueError(f"A/B arm {name!r} is not a loaded model; loaded: {available}")
        weights[name] = weight
    total = sum(weights.values())
    if total <= 0:
        raise ValueError("A/B weights must not all be zero")
    return {name: w / total for name, w in weights.items() if w > 0}


def client_point(client_id: str | None) -> float:
    """A client's stable point in [0, 1) (random without an id)."""
    if not client_id:
        return random.random()
    digest = hashlib.sha256(client_id.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def pick_arm(weights: dict[str, float], client_id: str | None) -> str:
    point, cumulative = client_point(client_id), 0.0
    arms = list(weights.items())
    for name, weight in arms:
        cumulative += weight
        if point < cumulative:
            return name
    return arms[-1][0]


@dataclass
class ArmStats:
    requests: int = 0
    errors: int = 0
    abandoned: int = 0  # the client left before its answer: neither a success nor an error
    tokens: int = 0
    bpc_sum: float = 0.0
    bpc_count: int = 0
    latencies: deque = field(default_factory=lambda: deque(maxlen=10_000))


class ABStats:
    """Per-arm figures since start, for GET /ab (thread-safe)."""

    def __init__(self) -> None:
        self._arms: dict[str, ArmStats] = {}
        self._lock = threading.Lock()

    def record(
        self,
        arm: str,
        seconds: float,
        ok: bool,
        tokens: int = 0,
        bpc: float | None = None,
        abandoned: bool = False,
    ) -> None:
        """One request; an abandoned one counts apart, and its time (to the hang-up) stays out
        of the latencies."""
        with self._lock:
            stats = self._arms.setdefault(arm, ArmStats())
            stats.requests += 1
            stats.tokens += tokens
            if abandoned:
                stats.abandoned += 1
                return
            stats.errors += 0 if ok else 1
            stats.latencies.append(seconds)
            if bpc is not None:
                stats.bpc_sum += bpc
                stats.bpc_count += 1

    def summary(self) -> dict[str, dict]:
        with self._lock:
            out = {}
            for arm, s in sorted(self._arms.items()):
                lat = np.asarray(s.latencies) * 1000
                out[arm] = {
                    "requests": s.requests,
                    "errors": s.errors,
                    "abandoned": s.abandoned,
                    "tokens_generated": s.tokens,
                    "latency_ms": {
                        q: float(np.percentile(lat, p)) if lat.size else None
                        for q, p in (("p50", 50), ("p95", 95), ("p99", 99))
                    },
                    "mean_bits_per_character": s.bpc_sum / s.bpc_count if s.bpc_count else None,
                    "texts_scored": s.bpc_count,
                }
            return out
