"""A/B experiments: `model: "ab"` picks an arm by configured weights, sticky per client, and
the experiment's report is computed from its record (service.ab_store).

A client id hashes to a point in [0, 1) and the point to an arm, so the same client lands on the
same arm in every replica without shared state; without an id the point is random.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import asdict

import numpy as np

from service.ab_stats import mean_interval, verdict, welch

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


def client_hash(client_id: str | None) -> str | None:
    """What the record keeps of a client: a hash that groups its requests, not its id."""
    if not client_id:
        return None
    return hashlib.sha256(client_id.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def _percentiles(values: list[float]) -> dict[str, float | None]:
    array = np.asarray(values, dtype=np.float64)
    return {
        name: float(np.percentile(array, q)) if array.size else None
        for name, q in (("p50", 50), ("p95", 95), ("p99", 99))
    }


def _interval(
    values: list[float], bounds: tuple[float, float] | None = None
) -> dict[str, float | int | None]:
    """The mean and its 95 % interval; with ``bounds``, the interval kept within what a mean
    of such values can be (a reward's mean lies in [0, 1])."""
    estimate = mean_interval(values)
    low, high = estimate.low, estimate.high
    if bounds is not None and low is not None:
        low, high = max(bounds[0], low), min(bounds[1], high)
    return {"n": estimate.n, "mean": estimate.mean, "low": low, "high": high}


def report(
    rows: list[dict], arms: list[str], reference: str | None, effect: float
) -> dict[str, dict]:
    """Per arm, from the record's rows: requests, errors, abandoned, tokens, latency
    percentiles (answered requests), the reward and the bits per character with their 95 %
    intervals; and each arm against ``reference`` (Welch's t-test on the rewards)."""
    by_arm: dict[str, list[dict]] = {arm: [] for arm in arms}
    for row in rows:
        by_arm.setdefault(row["arm"], []).append(row)
    summary, rewards = {}, {}
    for arm, mine in sorted(by_arm.items()):
        answered = [r for r in mine if r["outcome"] != "abandoned"]
        bpc = [r["bpc"] for r in answered if r["bpc"] is not None]
        rewards[arm] = [r["reward"] for r in mine if r["reward"] is not None]
        summary[arm] = {
            "requests": len(mine),
            "errors": sum(r["outcome"] == "error" for r in mine),
            "abandoned": len(mine) - len(answered),
            "tokens_generated": sum(r["tokens"] for r in mine),
            "latency_ms": _percentiles(
                [r["latency_ms"] for r in answered if r["latency_ms"] is not None]
            ),
            "reward": _interval(rewards[arm], (0.0, 1.0)),
            "bits_per_character": _interval(bpc),
            "mean_bits_per_character": sum(bpc) / len(bpc) if bpc else None,
            "texts_scored": len(bpc),
        }
    comparisons = {}
    if reference is not None:
        for arm in summary:
            if arm == reference:
                continue
            result = welch(rewards[arm], rewards.get(reference, []), effect)
            comparisons[arm] = {
                "against": reference,
                **asdict(result),
                "verdict": verdict(arm, reference, result),
            }
    return {"arms": summary, "comparisons": comparisons}
