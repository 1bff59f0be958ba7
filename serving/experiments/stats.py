"""Statistics for A/B reports, in plain Python (no SciPy): exact formulas, normal approximations.

- proportions (thumbs-up rate, error rate): two-proportion z-test with a pooled variance;
- means (numeric scores): Welch's z statistic (normal approximation, fine from ~30 samples);
- latency / TTFT: Mann-Whitney U with tie correction and a continuity correction.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

Z95 = 1.959963984540054


def normal_sf(z: float) -> float:
    """P(Z > z) for a standard normal."""
    return 0.5 * math.erfc(z / math.sqrt(2))


def two_sided_p(z: float) -> float:
    return min(1.0, 2 * normal_sf(abs(z)))


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear-interpolated percentile (numpy's default), q in [0, 100]."""
    if not values:
        return None
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


@dataclass(frozen=True)
class Estimate:
    n: int
    mean: float
    low: float
    high: float


def mean_ci(values: Sequence[float]) -> Estimate | None:
    """Mean with a 95% normal-approximation interval (sample standard deviation)."""
    n = len(values)
    if n == 0:
        return None
    m = sum(values) / n
    if n == 1:
        return Estimate(1, m, m, m)
    sd = math.sqrt(sum((x - m) ** 2 for x in values) / (n - 1))
    half = Z95 * sd / math.sqrt(n)
    return Estimate(n, m, m - half, m + half)


def proportion_ci(successes: int, n: int) -> Estimate | None:
    """Wilson score interval for a proportion."""
    if n == 0:
        return None
    p = successes / n
    denom = 1 + Z95**2 / n
    centre = (p + Z95**2 / (2 * n)) / denom
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n * n)) / denom
    return Estimate(n, p, centre - half, centre + half)


@dataclass(frozen=True)
class Test:
    name: str
    statistic: float
    p_value: float
    difference: float
    """B minus A, in the metric's unit."""


def two_proportion_z(x1: int, n1: int, x2: int, n2: int) -> Test | None:
    if n1 == 0 or n2 == 0:
        return None
    p1, p2 = x1 / n1, x2 / n2
    pooled = (x1 + x2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    z = 0.0 if se == 0 else (p2 - p1) / se
    return Test("two-proportion z-test", z, two_sided_p(z) if se else 1.0, p2 - p1)


def fisher_greater(x1: int, n1: int, x2: int, n2: int) -> float:
    """One-sided Fisher exact p of "group 2's proportion is higher than group 1's": P(X >= x2) for
    X hypergeometric (x1 + x2 successes among n1 + n2, n2 drawn). Exact where the normal
    approximation is not: with few events (one empty answer in 38 is no evidence, whatever n1)."""
    k, n = x1 + x2, n1 + n2
    if n1 == 0 or n2 == 0:
        return 1.0

    def log_pmf(i: int) -> float:
        return _log_choose(k, i) + _log_choose(n - k, n2 - i) - _log_choose(n, n2)

    top = min(k, n2)
    return min(1.0, sum(math.exp(log_pmf(i)) for i in range(max(x2, k - n1, 0), top + 1)))


def _log_choose(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def welch_z(a: Sequence[float], b: Sequence[float]) -> Test | None:
    if len(a) < 2 or len(b) < 2:
        return None
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    va = sum((x - ma) ** 2 for x in a) / (len(a) - 1)
    vb = sum((x - mb) ** 2 for x in b) / (len(b) - 1)
    se = math.sqrt(va / len(a) + vb / len(b))
    z = 0.0 if se == 0 else (mb - ma) / se
    return Test("Welch z-test", z, two_sided_p(z) if se else 1.0, mb - ma)


def mann_whitney(a: Sequence[float], b: Sequence[float]) -> Test | None:
    """Mann-Whitney U (two-sided, normal approximation with tie and continuity corrections)."""
    n1, n2 = len(a), len(b)
    if n1 == 0 or n2 == 0:
        return None
    pooled = sorted([(x, 0) for x in a] + [(x, 1) for x in b])
    ranks = [0.0] * len(pooled)
    ties = 0.0
    i = 0
    while i < len(pooled):
        j = i
        while j + 1 < len(pooled) and pooled[j + 1][0] == pooled[i][0]:
            j += 1
        for k in range(i, j + 1):
            ranks[k] = (i + j) / 2 + 1
        t = j - i + 1
        ties += t**3 - t
        i = j + 1
    r1 = sum(r for r, (_, g) in zip(ranks, pooled, strict=True) if g == 0)
    u1 = r1 - n1 * (n1 + 1) / 2
    n = n1 + n2
    mu = n1 * n2 / 2
    sigma = math.sqrt(n1 * n2 / 12 * ((n + 1) - ties / (n * (n - 1)))) if n > 1 else 0.0
    if sigma == 0:
        return Test("Mann-Whitney U", u1, 1.0, _median(b) - _median(a))
    z = (u1 - mu - math.copysign(0.5, u1 - mu)) / sigma if u1 != mu else 0.0
    return Test("Mann-Whitney U", u1, two_sided_p(z), _median(b) - _median(a))


def _median(xs: Sequence[float]) -> float:
    value = percentile(xs, 50)
    return 0.0 if value is None else value
