"""The statistics of an A/B experiment: a mean with its confidence interval, and two arms
compared by Welch's t-test (Welch 1947), with the sample size still needed to detect an effect.

Pure Python on lists of numbers, so the figures are tested against known values without a
server. Student's t distribution comes from the regularized incomplete beta function, evaluated
by its continued fraction (Numerical Recipes, 3rd ed., section 6.4); the normal quantiles of the
sample size from the standard library's NormalDist.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from statistics import NormalDist

CONFIDENCE = 0.95
POWER = 0.8  # of the sample size: the chance of detecting the effect if it is there


def _beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz's method)."""
    tiny, eps = 1e-300, 3e-16
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 400):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        step = d * c
        h *= step
        if abs(step - 1.0) < eps:
            break
    return h


def incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b), for x in [0, 1]."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    front = math.exp(log_front)
    # The fraction converges fast for x below (a + 1) / (a + b + 2); above, by symmetry.
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _beta_fraction(a, b, x) / a
    return 1.0 - front * _beta_fraction(b, a, 1.0 - x) / b


def t_sf(t: float, df: float) -> float:
    """P(T > t) for Student's t with ``df`` degrees of freedom (df may be fractional)."""
    tail = 0.5 * incomplete_beta(df / 2.0, 0.5, df / (df + t * t))
    return tail if t >= 0 else 1.0 - tail


@functools.lru_cache(maxsize=4096)
def t_quantile(p: float, df: float) -> float:
    """The t with P(T <= t) = p, by bisection on t_sf (p in (0, 1)), to about 1e-12."""
    low, high = -1e3, 1e3
    while high - low > 1e-12 * max(1.0, abs(low)):
        mid = (low + high) / 2.0
        if 1.0 - t_sf(mid, df) < p:
            low = mid
        else:
            high = mid
    return (low + high) / 2.0


@dataclass(frozen=True)
class Estimate:
    """A mean with its two-sided confidence interval (Student's t); no interval below 2."""

    n: int
    mean: float | None
    low: float | None
    high: float | None
    sd: float | None


def mean_interval(values: list[float], confidence: float = CONFIDENCE) -> Estimate:
    n = len(values)
    if n == 0:
        return Estimate(0, None, None, None, None)
    mean = math.fsum(values) / n
    if n < 2:
        return Estimate(n, mean, None, None, None)
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_quantile(0.5 + confidence / 2.0, n - 1) * sd / math.sqrt(n)
    return Estimate(n, mean, mean - half, mean + half, sd)


@dataclass(frozen=True)
class Comparison:
    """An arm against the reference arm: the difference of their means (arm - reference), its
    confidence interval, Welch's t-test p-value, and how many more samples per arm a test of
    this confidence and POWER would need to detect a difference of ``effect``."""

    difference: float | None
    low: float | None
    high: float | None
    p_value: float | None
    df: float | None
    effect: float
    needed_per_arm: int | None
    more_per_arm: int | None
    test: str = "Welch's t-test, two-sided"


def welch(
    arm: list[float], reference: list[float], effect: float, confidence: float = CONFIDENCE
) -> Comparison:
    n1, n2 = len(arm), len(reference)
    if n1 < 2 or n2 < 2:
        return Comparison(None, None, None, None, None, effect, None, None)
    a, b = mean_interval(arm), mean_interval(reference)
    v1, v2 = a.sd**2 / n1, b.sd**2 / n2
    difference = a.mean - b.mean
    needed = sample_size(a.sd, b.sd, effect, confidence)
    more = None if needed is None else max(0, needed - min(n1, n2))
    if v1 + v2 == 0.0:  # both arms constant: the difference is what it is, no test to make
        p = 0.0 if difference != 0.0 else 1.0
        return Comparison(difference, difference, difference, p, None, effect, needed, more)
    se = math.sqrt(v1 + v2)
    df = (v1 + v2) ** 2 / (v1**2 / (n1 - 1) + v2**2 / (n2 - 1))
    half = t_quantile(0.5 + confidence / 2.0, df) * se
    p = min(1.0, 2.0 * t_sf(abs(difference) / se, df))
    return Comparison(difference, difference - half, difference + half, p, df, effect, needed, more)


def sample_size(
    sd1: float, sd2: float, effect: float, confidence: float = CONFIDENCE, power: float = POWER
) -> int | None:
    """Samples per arm for a two-sided test at ``confidence`` to detect a difference of
    ``effect`` with ``power``, with the arms' standard deviations (normal approximation)."""
    if effect <= 0:
        return None
    z = NormalDist().inv_cdf(0.5 + confidence / 2.0) + NormalDist().inv_cdf(power)
    return max(2, math.ceil(z * z * (sd1 * sd1 + sd2 * sd2) / (effect * effect)))


def verdict(
    arm: str, reference: str, comparison: Comparison, confidence: float = CONFIDENCE
) -> str:
    """The comparison in words, e.g. 'attention ahead of bengio by 0.12 ± 0.05, p = 0.001'."""
    if comparison.difference is None:
        return f"{arm} against {reference}: too few rewards to compare (2 per arm at least)"
    d, half = comparison.difference, (comparison.high - comparison.low) / 2.0
    p = comparison.p_value
    shown_p = "p < 0.001" if p < 0.001 else f"p = {p:.3f}"
    if p < 1.0 - confidence:
        side = "ahead of" if d > 0 else "behind"
        return f"{arm} {side} {reference} by {abs(d):.3f} ± {half:.3f}, {shown_p}"
    more = comparison.more_per_arm
    need = f"; about {more} more rewards per arm to detect {comparison.effect:g}" if more else ""
    return f"{arm} and {reference} not told apart: {d:+.3f} ± {half:.3f}, {shown_p}{need}"
