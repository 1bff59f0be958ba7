"""Drift of a served version: its recent window of logged traffic against its first days in service.

For each version that answered logged requests (`platform serve --log-payloads`), the reference
is the traffic of its first `reference_s` seconds in service and the current window the last
`window_s` seconds (never overlapping the reference). Signals, each with the test used:

- completion length (tokens), latency, time to first token: Mann-Whitney U (medians compared);
- empty-or-refused rate, thumbs-up rate: two-proportion z-test;
- score: Welch's z-test.

A signal "moved" when both windows have at least `min_n` values and p < `alpha`. Pure
computation over rows read from the registry: `platform monitor` and the server's `/metrics`
gauges both call `drift_report`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from registry.payloads import LoggedCompletion, PayloadStore
from serving.experiments import stats

REFUSAL = re.compile(
    r"^\s*(i'?m sorry|sorry, i|i can(no|')t|i am (not able|unable)|i'?m (not able|unable)|as an ai)",
    re.IGNORECASE,
)
"""The openings of a refusal (English), checked at the start of a completion."""


def empty_or_refused(text: str | None) -> bool:
    return not (text or "").strip() or bool(REFUSAL.match(text or ""))


@dataclass(frozen=True)
class Signal:
    """One signal: how it is read from a row and compared."""

    name: str
    kind: str
    """`median` (Mann-Whitney), `rate` (two-proportion z) or `mean` (Welch z)."""
    read: Callable[[LoggedCompletion], float | None]


SIGNALS = (
    Signal("completion_tokens", "median", lambda c: float(c.record.completion_tokens)),
    Signal("empty_or_refused_rate", "rate", lambda c: float(empty_or_refused(c.record.completion))),
    Signal("thumbs_up_rate", "rate", lambda c: None if c.thumbs is None else float(c.thumbs)),
    Signal("score", "mean", lambda c: c.score),
    Signal("latency_s", "median", lambda c: c.record.latency_s),
    Signal("ttft_s", "median", lambda c: c.record.ttft_s),
)


@dataclass(frozen=True)
class SignalDrift:
    """One signal of one version: reference against current window."""

    signal: str
    reference: float | None
    current: float | None
    n_reference: int
    n_current: int
    test: str | None
    p_value: float | None
    moved: bool


@dataclass
class VersionDrift:
    """The drift report of one version."""

    version: str
    started: float
    """Unix time of its first logged request."""
    reference: tuple[float, float]
    current: tuple[float, float]
    signals: list[SignalDrift] = field(default_factory=list)

    @property
    def moved(self) -> list[SignalDrift]:
        return [s for s in self.signals if s.moved]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "moved": [s.signal for s in self.moved]}


def _summary(kind: str, values: Sequence[float]) -> float | None:
    if not values:
        return None
    if kind == "median":
        return stats.percentile(values, 50)
    return sum(values) / len(values)


def _test(kind: str, ref: Sequence[float], cur: Sequence[float]) -> stats.Test | None:
    if kind == "median":
        return stats.mann_whitney(ref, cur)
    if kind == "rate":
        return stats.two_proportion_z(int(sum(ref)), len(ref), int(sum(cur)), len(cur))
    return stats.welch_z(ref, cur)


def compare(
    signal: Signal,
    ref_rows: list[LoggedCompletion],
    cur_rows: list[LoggedCompletion],
    alpha: float,
    min_n: int,
) -> SignalDrift:
    ref = [v for v in map(signal.read, ref_rows) if v is not None]
    cur = [v for v in map(signal.read, cur_rows) if v is not None]
    enough = len(ref) >= min_n and len(cur) >= min_n
    test = _test(signal.kind, ref, cur) if enough else None
    return SignalDrift(
        signal=signal.name,
        reference=_summary(signal.kind, ref),
        current=_summary(signal.kind, cur),
        n_reference=len(ref),
        n_current=len(cur),
        test=None if test is None else test.name,
        p_value=None if test is None else test.p_value,
        moved=test is not None and test.p_value < alpha,
    )


def version_drift(
    version: str,
    rows: list[LoggedCompletion],
    reference_s: float,
    window_s: float,
    now: float,
    alpha: float = 0.01,
    min_n: int = 10,
) -> VersionDrift:
    """Drift of one version's successful logged rows (oldest first)."""
    ok = [r for r in rows if r.record.status == "ok"]
    started = ok[0].record.ts if ok else now
    ref_end = started + reference_s
    cur_start = max(now - window_s, ref_end)
    ref_rows = [r for r in ok if r.record.ts < ref_end]
    cur_rows = [r for r in ok if cur_start <= r.record.ts <= now]
    report = VersionDrift(version, started, (started, ref_end), (cur_start, now))
    report.signals = [compare(s, ref_rows, cur_rows, alpha, min_n) for s in SIGNALS]
    return report


def drift_report(
    store: PayloadStore,
    name: str,
    reference_s: float,
    window_s: float,
    now: float | None = None,
    alpha: float = 0.01,
    min_n: int = 10,
) -> list[VersionDrift]:
    """Drift of every version of adapter or route `name` that answered logged requests."""
    now = time.time() if now is None else now
    out = []
    for version in store.versions(name):
        rows = store.completions(name, version=version)
        out.append(version_drift(version, rows, reference_s, window_s, now, alpha, min_n))
    return out
