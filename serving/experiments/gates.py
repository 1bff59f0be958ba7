"""Rollout gates: candidate against baseline, each judged with a one-sided test against a margin.

Every gate gives one of three outcomes on the evidence of a step:
- pass: the data says the candidate is not worse than the baseline beyond the margin
  (the one-sided test of "worse beyond the margin" rejects it at ALPHA);
- fail: the candidate is significantly worse (one-sided, ALPHA) and its estimate is beyond the margin;
- inconclusive: neither yet (more data is needed).

Kinds: `pt` gates compare proportions (absolute difference in points, 1pt = 0.01; normal
approximation, unpooled, for the margin; Fisher's exact test for "worse"); `x` gates
compare distributions on a ratio scale (Mann-Whitney U against the baseline scaled by the margin,
reported as the ratio of the percentiles); `score` compares means (Welch).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from serving.experiments import stats

ALPHA = 0.05
Z_ONE_SIDED = 1.6448536269514722


@dataclass(frozen=True)
class GateKind:
    metric: str
    op: str
    """`<=` (worse is higher) or `>=` (worse is lower)"""
    unit: str
    """`pt` (absolute points of a proportion) or `x` (a ratio)"""
    default: float
    help: str


GATES: dict[str, GateKind] = {
    "error_rate": GateKind("error rate", "<=", "pt", 1.0, "candidate error rate minus baseline's"),
    "latency_p95": GateKind("latency p95", "<=", "x", 1.5, "latency, candidate over baseline"),
    "ttft_p95": GateKind("TTFT p95", "<=", "x", 1.5, "time to first token, candidate over baseline"),
    "thumbs_up": GateKind("thumbs-up rate", ">=", "pt", -5.0, "candidate thumbs-up rate minus baseline's"),
    "score": GateKind("mean score", ">=", "x", 0.95, "mean feedback score, candidate over baseline"),
    "length_p50": GateKind("completion length p50", "<=", "x", 2.0, "completion length drift, either way"),
    "empty_rate": GateKind(
        "empty completion rate", "<=", "pt", 1.0, "share of empty completions, difference"
    ),
}
FEEDBACK_GATES = ("thumbs_up", "score")
"""Gates on user feedback: judged only with `min_feedback` events per variant, never in shadow."""
_GATE_RE = re.compile(r"^\s*([a-z_0-9]+)\s*(<=|>=|=)\s*([+-]?[0-9.]+|off)\s*(pt|x)?\s*$")


class GateError(ValueError):
    """A `--gate` expression is malformed."""


@dataclass(frozen=True)
class Gate:
    name: str
    limit: float | None
    """The margin in the gate's unit; None: the gate is off."""

    @property
    def kind(self) -> GateKind:
        return GATES[self.name]

    @property
    def text(self) -> str:
        k = self.kind
        if self.limit is None:
            return f"{self.name}=off"
        sign = "+" if k.unit == "pt" and self.limit >= 0 else ""
        return f"{self.name}{k.op}{sign}{self.limit:g}{k.unit}"


def parse_gate(text: str) -> Gate:
    """`error_rate<=+1pt`, `ttft_p95<=1.25x`, `thumbs_up>=-3pt`, `score>=0.9x`, `latency_p95=off`."""
    m = _GATE_RE.match(text)
    if not m:
        raise GateError(f"gate {text!r}: expected NAME<=VALUE[pt|x], NAME>=VALUE[pt|x] or NAME=off")
    name, op, value, unit = m.groups()
    if name not in GATES:
        raise GateError(f"gate {text!r}: unknown gate {name!r}; known: {', '.join(GATES)}")
    kind = GATES[name]
    if value == "off" or op == "=":
        if value != "off":
            raise GateError(f"gate {text!r}: use {name}{kind.op}VALUE{kind.unit} or {name}=off")
        return Gate(name, None)
    if op != kind.op or (unit or kind.unit) != kind.unit:
        raise GateError(f"gate {text!r}: {name} is written {name}{kind.op}VALUE{kind.unit}")
    limit = float(value)
    if kind.unit == "x" and limit <= 0:
        raise GateError(f"gate {text!r}: a ratio must be positive")
    return Gate(name, limit)


def gate_set(overrides: dict[str, str]) -> list[Gate]:
    """Every gate: its default unless `overrides` (name -> expression) sets it."""
    out = []
    for name, kind in GATES.items():
        out.append(parse_gate(name + overrides[name]) if name in overrides else Gate(name, kind.default))
    return out


@dataclass(frozen=True)
class Sample:
    """One variant's evidence in one step."""

    requests: int
    errors: int
    latency: list[float]
    ttft: list[float]
    lengths: list[float]
    empty: int
    thumbs: list[int]
    scores: list[float]

    @classmethod
    def of(cls, reqs: Sequence[dict[str, Any]], fb: Sequence[dict[str, Any]]) -> Sample:
        ok = [r for r in reqs if r["status"] == "ok"]
        return cls(
            requests=len(reqs),
            errors=len(reqs) - len(ok),
            latency=[r["latency_s"] for r in ok if r["latency_s"] is not None],
            ttft=[r["ttft_s"] for r in ok if r["ttft_s"] is not None],
            lengths=[float(r["completion_tokens"] or 0) for r in ok],
            empty=sum(1 for r in ok if not r["completion_tokens"]),
            thumbs=[int(f["thumbs"]) for f in fb if f["thumbs"] is not None],
            scores=[float(f["score"]) for f in fb if f["score"] is not None],
        )

    def numbers(self) -> dict[str, Any]:
        def r(x: float | None) -> float | None:
            return None if x is None else round(x, 4)

        return {
            "requests": self.requests,
            "errors": self.errors,
            "error_rate": r(self.errors / self.requests) if self.requests else None,
            "latency_p95_s": r(stats.percentile(self.latency, 95)),
            "ttft_p95_s": r(stats.percentile(self.ttft, 95)),
            "length_p50": r(stats.percentile(self.lengths, 50)),
            "empty_rate": r(self.empty / len(self.lengths)) if self.lengths else None,
            "feedback": max(len(self.thumbs), len(self.scores)),
            "thumbs_up_rate": r(sum(self.thumbs) / len(self.thumbs)) if self.thumbs else None,
            "score_mean": r(sum(self.scores) / len(self.scores)) if self.scores else None,
        }


@dataclass(frozen=True)
class GateResult:
    gate: str
    outcome: str
    """pass | fail | inconclusive | skipped | little-feedback (a feedback gate below its minimum)"""
    value: float | None
    """The observed difference (points) or ratio."""
    limit: float | None
    p_value: float | None
    """One-sided p of "worse" (fail) or of "worse beyond the margin" (pass), whichever decided."""
    note: str | None = None

    def describe(self) -> str:
        k = GATES[self.gate]
        if self.note:
            return f"{self.gate} ({self.note})"
        value = (
            "-"
            if self.value is None
            else f"{self.value:+.2f}{k.unit}"
            if k.unit == "pt"
            else f"{self.value:.2f}x"
        )
        p = "" if self.p_value is None else f", p={self.p_value:.3g}"
        return f"{self.gate} {value} (limit {k.op}{self.limit:g}{k.unit}{p})"


def evaluate(gate: Gate, base: Sample, cand: Sample, min_feedback: int) -> GateResult:
    """One gate on the two samples (the caller checked both have enough requests). A feedback
    gate with fewer than `min_feedback` events on either side is `little-feedback` (not judged)."""
    if gate.limit is None:
        return GateResult(gate.name, "skipped", None, None, None)
    n = gate.name
    if n == "error_rate":
        return _proportions(gate, base.errors, base.requests, cand.errors, cand.requests)
    if n == "empty_rate":
        return _proportions(gate, base.empty, len(base.lengths), cand.empty, len(cand.lengths))
    if n in FEEDBACK_GATES:
        a: list[float] = [float(x) for x in (base.thumbs if n == "thumbs_up" else base.scores)]
        b: list[float] = [float(x) for x in (cand.thumbs if n == "thumbs_up" else cand.scores)]
        if not a and not b:
            return GateResult(n, "skipped", None, gate.limit, None)
        if min(len(a), len(b)) < min_feedback:
            note = f"{len(a)} baseline and {len(b)} candidate feedback events, need {min_feedback} each"
            return GateResult(n, "little-feedback", None, gate.limit, None, note)
        if n == "score":
            return _means(gate, a, b)
        return _proportions(gate, round(sum(a)), len(a), round(sum(b)), len(b))
    pairs = {"latency_p95": (base.latency, cand.latency, 95), "ttft_p95": (base.ttft, cand.ttft, 95)}
    if n in pairs:
        a, b, q = pairs[n]
        return _ratio(gate, a, b, q)
    return _drift(gate, base.lengths, cand.lengths)


def _proportions(gate: Gate, xa: int, na: int, xb: int, nb: int) -> GateResult:
    """Proportions a (baseline) and b (candidate); the margin in points, signed by the gate's op."""
    if na == 0 or nb == 0:
        return GateResult(gate.name, "inconclusive", None, gate.limit, None)
    assert gate.limit is not None
    pa, pb = xa / na, xb / nb
    worse_sign = 1.0 if gate.kind.op == "<=" else -1.0
    d = worse_sign * (pb - pa)  # how much worse the candidate is, as a proportion
    margin = worse_sign * gate.limit / 100
    value = (pb - pa) * 100
    # exact: a handful of events (one empty answer) must not look significant against many zeros
    if worse_sign > 0:
        p_worse = stats.fisher_greater(xa, na, xb, nb)
    else:
        p_worse = stats.fisher_greater(na - xa, na, nb - xb, nb)
    if d > margin and p_worse < ALPHA:
        return GateResult(gate.name, "fail", value, gate.limit, p_worse)
    se = math.sqrt(pa * (1 - pa) / na + pb * (1 - pb) / nb)
    if se == 0:
        return GateResult(gate.name, "pass" if d <= margin else "fail", value, gate.limit, None)
    p_beyond = stats.normal_sf((margin - d) / se)
    outcome = "pass" if p_beyond < ALPHA else "inconclusive"
    return GateResult(gate.name, outcome, value, gate.limit, p_beyond)


def _one_sided_less(a: Sequence[float], b: Sequence[float]) -> float:
    """One-sided Mann-Whitney p of "a tends to be smaller than b"."""
    test = stats.mann_whitney(a, b)
    if test is None:
        return 1.0
    smaller = test.statistic < len(a) * len(b) / 2
    return test.p_value / 2 if smaller else 1 - test.p_value / 2


def _ratio(gate: Gate, base: list[float], cand: list[float], q: float) -> GateResult:
    """Worse is higher: pass when the candidate is significantly below limit x baseline, fail when
    significantly above it."""
    assert gate.limit is not None
    if not base or not cand:
        return GateResult(gate.name, "inconclusive", None, gate.limit, None)
    pb, pc = stats.percentile(base, q), stats.percentile(cand, q)
    value = None if not pb or pc is None else pc / pb
    scaled = [x * gate.limit for x in base]
    p_fail = _one_sided_less(scaled, cand)
    if p_fail < ALPHA:
        return GateResult(gate.name, "fail", value, gate.limit, p_fail)
    p_pass = _one_sided_less(cand, scaled)
    return GateResult(gate.name, "pass" if p_pass < ALPHA else "inconclusive", value, gate.limit, p_pass)


def _drift(gate: Gate, base: list[float], cand: list[float]) -> GateResult:
    """Completion length: the candidate's lengths must stay within [1/limit, limit] x baseline's."""
    assert gate.limit is not None
    if not base or not cand:
        return GateResult(gate.name, "inconclusive", None, gate.limit, None)
    mb, mc = stats.percentile(base, 50), stats.percentile(cand, 50)
    value = None if not mb or mc is None else mc / mb
    # +1 token keeps empty completions comparable on a ratio scale
    b1, c1 = [x + 1 for x in base], [x + 1 for x in cand]
    high, low = [x * gate.limit for x in b1], [x / gate.limit for x in b1]
    p_fail = min(_one_sided_less(high, c1), _one_sided_less(c1, low))
    if p_fail < ALPHA:
        return GateResult(gate.name, "fail", value, gate.limit, p_fail)
    p_pass = max(_one_sided_less(c1, high), _one_sided_less(low, c1))
    return GateResult(gate.name, "pass" if p_pass < ALPHA else "inconclusive", value, gate.limit, p_pass)


def _means(gate: Gate, base: list[float], cand: list[float]) -> GateResult:
    """Worse is lower: the candidate's mean against limit x the baseline's (Welch)."""
    assert gate.limit is not None
    ma, mc = sum(base) / len(base), sum(cand) / len(cand)
    value = mc / ma if ma else None
    if len(set(base)) == 1 and len(set(cand)) == 1:  # no variance: the means decide
        ok = mc >= ma * gate.limit
        return GateResult(gate.name, "pass" if ok else "fail", value, gate.limit, None)
    worse = stats.welch_z(base, cand)
    scaled = stats.welch_z([x * gate.limit for x in base], cand)
    if worse is None or scaled is None:
        return GateResult(gate.name, "inconclusive", value, gate.limit, None)
    p_worse = stats.normal_sf(-worse.statistic)
    if mc < ma * gate.limit and p_worse < ALPHA:
        return GateResult(gate.name, "fail", value, gate.limit, p_worse)
    p_beyond = stats.normal_sf(scaled.statistic)
    return GateResult(gate.name, "pass" if p_beyond < ALPHA else "inconclusive", value, gate.limit, p_beyond)


@dataclass(frozen=True)
class OfflineGate:
    """`exact_match>=baseline-0.02`: the candidate's offline metric against the baseline's (plus
    an offset) or a fixed number, checked on a held-out file before any user traffic."""

    text: str
    metric: str
    op: str
    relative: bool
    offset: float

    def check(self, baseline: dict[str, float], candidate: dict[str, float]) -> tuple[bool, str]:
        """(passed, reason with the numbers)."""
        if self.metric not in candidate or (self.relative and self.metric not in baseline):
            known = ", ".join(sorted(candidate)) or "none"
            raise GateError(
                f"--eval-gate {self.text}: no metric {self.metric!r} (the evaluation has: {known})"
            )
        limit = (baseline[self.metric] if self.relative else 0.0) + self.offset
        value = candidate[self.metric]
        ok = value >= limit if self.op == ">=" else value <= limit
        against = f"baseline {baseline[self.metric]:.4f}, " if self.relative else ""
        return ok, f"{self.metric} {value:.4f} (candidate) vs limit {limit:.4f} ({against}gate {self.text})"


_OFFLINE_RE = re.compile(
    r"^(?P<metric>[A-Za-z_][\w.]*)\s*(?P<op>>=|<=)\s*(?:(?P<base>baseline)\s*(?P<sign>[+-])?\s*)?(?P<num>\d+(\.\d*)?)?$"
)


def parse_offline_gate(text: str) -> OfflineGate:
    """`METRIC>=baseline-0.02`, `METRIC<=baseline+1`, `METRIC>=baseline` or `METRIC>=0.8`."""
    m = _OFFLINE_RE.match(text.strip())
    if not m or (m["base"] is None and m["num"] is None) or (m["sign"] and m["num"] is None):
        raise GateError(
            f"--eval-gate {text!r}: expected METRIC>=baseline-0.02, METRIC<=baseline+1 or METRIC>=0.8"
        )
    offset = float(m["num"] or 0.0)
    if m["base"] is not None and m["sign"] == "-":
        offset = -offset
    return OfflineGate(text.strip(), m["metric"], m["op"], m["base"] is not None, offset)
