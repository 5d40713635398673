"""The A/B experiment's statistics against known values (scipy 1.x, computed once and written
here), and intervals that cover the true value at their nominal rate."""

from __future__ import annotations

import random

import pytest

from service.ab_stats import (
    incomplete_beta,
    mean_interval,
    sample_size,
    t_quantile,
    t_sf,
    verdict,
    welch,
)

A = [0.8, 0.6, 0.9, 1.0, 0.7, 0.75, 0.85]
B = [0.5, 0.4, 0.65, 0.3, 0.55, 0.6]


@pytest.mark.parametrize(
    ("a", "b", "x", "expected"),
    [(2, 3, 0.4, 0.5248), (0.5, 0.5, 0.9, 0.7951672353008665), (10, 0.5, 0.99, 0.6579281751567845)],
)
def test_ab_stats_incomplete_beta_is_scipys_betainc(a, b, x, expected):
    assert incomplete_beta(a, b, x) == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize(
    ("t", "df", "expected"),
    [
        (2.0, 5, 0.050969739414929174),
        (1.0, 3.5, 0.19066862678172264),
        (0.3, 100, 0.3823999401501518),
        (-1.2, 7, 0.8654140315863967),
        (4.0, 12.25, 0.0008466282240501257),
    ],
)
def test_ab_stats_t_tail_is_scipys(t, df, expected):
    assert t_sf(t, df) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize(
    ("p", "df", "expected"),
    [
        (0.975, 4, 2.7764451051977934),
        (0.975, 29, 2.045229642132703),
        (0.975, 9.3, 2.25108222468444),
        (0.9, 2, 1.8856180831641272),
    ],
)
def test_ab_stats_t_quantile_is_scipys(p, df, expected):
    assert t_quantile(p, df) == pytest.approx(expected, rel=1e-9)


def test_ab_stats_mean_interval_is_scipys_t_interval():
    estimate = mean_interval(A)
    assert (estimate.low, estimate.high) == pytest.approx((0.677654407442751, 0.9223455925572489))


def test_ab_stats_welch_is_scipys_ttest_ind():
    """scipy.stats.ttest_ind(A, B, equal_var=False): t 4.1079, df 10.745, p 0.0018224."""
    result = welch(A, B, effect=0.1)
    assert result.p_value == pytest.approx(0.0018224427602994279, rel=1e-8)
    assert result.df == pytest.approx(10.745015739769151, rel=1e-10)
    assert (result.low, result.high) == pytest.approx((0.1387961664271169, 0.46120383357288275))
    assert "ahead of" in verdict("a", "b", result) and "p = 0.002" in verdict("a", "b", result)


def test_ab_stats_too_few_values_give_no_test():
    assert mean_interval([]).mean is None and mean_interval([0.5]).low is None
    assert welch([1.0], B, 0.1).p_value is None
    assert "too few" in verdict("a", "b", welch([1.0], B, 0.1))


def test_ab_stats_sample_size_grows_as_the_effect_shrinks():
    """n = (z_0.975 + z_0.8)^2 (sd1^2 + sd2^2) / effect^2: 7.849 x 0.5 / 0.01 -> 393."""
    assert sample_size(0.5, 0.5, 0.1) == 393
    assert sample_size(0.5, 0.5, 0.05) > 4 * 390
    assert sample_size(0.5, 0.5, 0) is None


def test_ab_stats_intervals_cover_at_their_nominal_rate():
    """Over 2,000 simulated arms of 30 Bernoulli(0.3) rewards, the 95 % interval holds 0.3
    close to 95 % of the time; and two arms with the same rate differ at p < 0.05 close to 5 %
    of the time."""
    rng = random.Random(7)
    covered = false_alarms = 0
    runs = 2000
    for _ in range(runs):
        arm = [float(rng.random() < 0.3) for _ in range(30)]
        other = [float(rng.random() < 0.3) for _ in range(30)]
        estimate = mean_interval(arm)
        covered += estimate.low is not None and estimate.low <= 0.3 <= estimate.high
        result = welch(arm, other, 0.1)
        false_alarms += result.p_value is not None and result.p_value < 0.05
    assert 0.92 <= covered / runs <= 0.975, covered / runs
    assert 0.025 <= false_alarms / runs <= 0.075, false_alarms / runs
