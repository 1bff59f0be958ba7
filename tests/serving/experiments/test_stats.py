"""Report statistics against hand-computed values."""

from __future__ import annotations

import pytest

from serving.experiments import stats as abstats


def test_two_proportion_z_test_hand_computed() -> None:
    # 45/100 vs 60/100: pooled p = 0.525, se = sqrt(.525 * .475 * .02) = 0.070622, z = 2.1240, p = 0.03367
    t = abstats.two_proportion_z(45, 100, 60, 100)
    assert t is not None
    assert t.statistic == pytest.approx(2.1240, abs=1e-4)
    assert t.p_value == pytest.approx(0.03367, abs=1e-4)
    assert t.difference == pytest.approx(0.15)


def test_mann_whitney_hand_computed() -> None:
    # a = 1,2,3; b = 4,5,6: U1 = 0, mu = 4.5, sigma = sqrt(5.25), z = (0 - 4.5 + 0.5) / 2.2913 = -1.7457, p = 0.0809
    t = abstats.mann_whitney([1, 2, 3], [4, 5, 6])
    assert t is not None
    assert t.statistic == 0
    assert t.p_value == pytest.approx(0.0809, abs=1e-3)
    assert t.difference == 3


def test_mann_whitney_with_ties_and_no_difference() -> None:
    t = abstats.mann_whitney([1, 1, 2, 2], [1, 1, 2, 2])
    assert t is not None and t.p_value == pytest.approx(1.0)


def test_wilson_interval_and_mean_ci() -> None:
    e = abstats.proportion_ci(8, 10)
    assert e is not None and (round(e.low, 3), round(e.high, 3)) == (0.49, 0.943)
    m = abstats.mean_ci([1, 2, 3, 4, 5])
    # mean 3, sd 1.5811, half width 1.96 * 1.5811 / sqrt(5) = 1.3859
    assert m is not None and m.mean == 3 and m.high - m.mean == pytest.approx(1.3859, abs=1e-3)


def test_percentiles_interpolate_like_numpy() -> None:
    assert abstats.percentile([1, 2, 3, 4], 50) == 2.5
    assert abstats.percentile([10, 20, 30, 40, 50], 95) == pytest.approx(48)
    assert abstats.percentile([], 50) is None


def test_fisher_exact_one_sided_hand_computed() -> None:
    # 1/4 vs 3/4: P(X >= 3) = (C(4,3)C(4,1) + C(4,4)C(4,0)) / C(8,4) = 17/70
    assert abstats.fisher_greater(1, 4, 3, 4) == pytest.approx(17 / 70)
    # one event in 38 against none in 300: the one event lands in the 38 with probability 38/338
    assert abstats.fisher_greater(0, 300, 1, 38) == pytest.approx(38 / 338)
    assert abstats.fisher_greater(3, 4, 1, 4) == pytest.approx(69 / 70)
