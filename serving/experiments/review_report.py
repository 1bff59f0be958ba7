"""The results of a human review: win rate of B over A, per-criterion means, agreement, disagreement.

- Win rate of B over A: each complete rating counts 1 when B is preferred, 0 for A, and 1/2 for a
  tie ("ties count as half a win"); the 95% interval is a percentile bootstrap over items (an
  item's ratings are resampled together, since reviewers of one prompt are not independent).
- Per-criterion means of both versions and of the paired difference B - A, with 95% normal
  intervals (`serving.experiments.stats.mean_ci`).
- Inter-rater agreement: Krippendorff's alpha (the `krippendorff` package), ordinal, over the items
  rated by two or more reviewers: the preference coded A < tie < B, and each criterion's scores.
  None where it is undefined (fewer than two reviewers on any item, or no variation at all).
- Items with the most disagreement: the largest spread of preference codes among their reviewers.
"""

from __future__ import annotations

import csv
import io
import random
from collections.abc import Hashable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from registry.reviews import Item, Rating, ReviewSet
from registry.store import Registry
from serving.experiments.stats import Estimate, mean_ci

BOOTSTRAP = 2000
PREFERENCE_VALUE = {"a": 0.0, "tie": 0.5, "b": 1.0}
TIES = "ties count as half a win"
AGREEMENT = "Krippendorff's alpha (ordinal), items with 2+ reviewers"


@dataclass(frozen=True)
class CriterionResult:
    name: str
    a: Estimate | None
    b: Estimate | None
    difference: Estimate | None
    """B - A, paired per rating."""
    alpha: float | None


@dataclass(frozen=True)
class Disagreement:
    item: int
    prompt: str
    votes: dict[str, int]
    spread: float


@dataclass
class ReviewReport:
    review: str
    version_a: str
    version_b: str
    items: int
    reviewers: list[str]
    ratings: int
    """Complete ratings."""
    b_wins: int
    a_wins: int
    ties: int
    win_rate: Estimate | None
    alpha: float | None
    criteria: list[CriterionResult] = field(default_factory=list)
    disagreements: list[Disagreement] = field(default_factory=list)
    ties_rule: str = TIES
    agreement_method: str = AGREEMENT

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> dict[str, Any]:
        """The short form stored with both versions (`registry show`, the model card)."""
        w = self.win_rate
        return {
            "version_a": self.version_a,
            "version_b": self.version_b,
            "ratings": self.ratings,
            "items": self.items,
            "reviewers": len(self.reviewers),
            "b_wins": self.b_wins,
            "a_wins": self.a_wins,
            "ties": self.ties,
            "win_rate_b": None if w is None else round(w.mean, 4),
            "win_rate_low": None if w is None else round(w.low, 4),
            "win_rate_high": None if w is None else round(w.high, 4),
            "alpha": None if self.alpha is None else round(self.alpha, 4),
            "criteria": {
                c.name: {
                    "a": None if c.a is None else round(c.a.mean, 3),
                    "b": None if c.b is None else round(c.b.mean, 3),
                }
                for c in self.criteria
            },
        }


def report_for(reg: Registry, name: str) -> ReviewReport:
    """The report of review `name` from its stored ratings; its summary is stored with the review
    (so `registry show` and the model card of both versions show it)."""
    review = reg.reviews().get(name)
    report = build_report(review, reg.reviews().items(name), reg.reviews().ratings(name))
    reg.reviews().attach_summary(name, report.summary())
    return report


def build_report(review: ReviewSet, items: Sequence[Item], ratings: Sequence[Rating]) -> ReviewReport:
    done = [r for r in ratings if r.complete and r.preference is not None]
    prefs = [r.preference for r in done]
    rubric = review.spec.parsed_rubric
    by_index = {it.index: it for it in items}
    return ReviewReport(
        review=review.name,
        version_a=review.spec.version_a,
        version_b=review.spec.version_b,
        items=review.items,
        reviewers=sorted({r.reviewer for r in done}),
        ratings=len(done),
        b_wins=prefs.count("b"),
        a_wins=prefs.count("a"),
        ties=prefs.count("tie"),
        win_rate=win_rate(done),
        alpha=agreement(preference_units(done)),
        criteria=[_criterion(c.name, done) for c in rubric.criteria],
        disagreements=_disagreements(done, by_index),
    )


def win_rate(done: Sequence[Rating], seed: int = 0, rounds: int = BOOTSTRAP) -> Estimate | None:
    """Share of ratings preferring B (ties half), with a 95% bootstrap interval over items."""
    if not done:
        return None
    per_item: dict[int, list[float]] = {}
    for r in done:
        per_item.setdefault(r.item, []).append(PREFERENCE_VALUE[r.preference or "tie"])
    groups = list(per_item.values())
    mean = sum(map(sum, groups)) / len(done)
    rng = random.Random(seed)
    samples = []
    for _ in range(rounds):
        pick = [groups[rng.randrange(len(groups))] for _ in groups]
        samples.append(sum(map(sum, pick)) / sum(map(len, pick)))
    samples.sort()
    return Estimate(len(done), mean, samples[int(0.025 * rounds)], samples[int(0.975 * rounds) - 1])


def agreement(units: dict[Hashable, dict[str, float]]) -> float | None:
    """Krippendorff's alpha (ordinal) of unit -> {reviewer: value}, over units with 2+ reviewers."""
    import krippendorff
    import numpy as np

    shared = [u for u in units.values() if len(u) >= 2]
    if not shared or len({x for u in shared for x in u.values()}) < 2:
        return None
    reviewers = sorted({who for u in shared for who in u})
    data = np.array([[u.get(who, np.nan) for u in shared] for who in reviewers], dtype=float)
    try:
        alpha = float(krippendorff.alpha(reliability_data=data, level_of_measurement="ordinal"))
    except (ValueError, ZeroDivisionError):
        return None
    return None if alpha != alpha else alpha  # NaN: undefined


def preference_units(done: Sequence[Rating]) -> dict[Hashable, dict[str, float]]:
    units: dict[Hashable, dict[str, float]] = {}
    for r in done:
        units.setdefault(r.item, {})[r.reviewer] = PREFERENCE_VALUE[r.preference or "tie"]
    return units


def score_units(name: str, done: Sequence[Rating]) -> dict[Hashable, dict[str, float]]:
    """(item, version) -> {reviewer: score}: each answer is one unit."""
    units: dict[Hashable, dict[str, float]] = {}
    for r in done:
        for side, score in r.scores.get(name, {}).items():
            units.setdefault((r.item, side), {})[r.reviewer] = float(score)
    return units


def _criterion(name: str, done: Sequence[Rating]) -> CriterionResult:
    pairs = [r.scores[name] for r in done if len(r.scores.get(name, {})) == 2]
    return CriterionResult(
        name,
        mean_ci([float(p["a"]) for p in pairs]),
        mean_ci([float(p["b"]) for p in pairs]),
        mean_ci([float(p["b"] - p["a"]) for p in pairs]),
        agreement(score_units(name, done)),
    )


def _disagreements(done: Sequence[Rating], items: dict[int, Item], top: int = 5) -> list[Disagreement]:
    per_item: dict[int, list[str]] = {}
    for r in done:
        per_item.setdefault(r.item, []).append(r.preference or "tie")
    out = []
    for index, votes in per_item.items():
        if len(votes) < 2:
            continue
        values = [PREFERENCE_VALUE[v] for v in votes]
        spread = max(values) - min(values)
        if spread > 0:
            counts = {k: votes.count(k) for k in ("a", "tie", "b") if votes.count(k)}
            out.append(Disagreement(index, items[index].prompt if index in items else "", counts, spread))
    out.sort(key=lambda d: (-d.spread, d.item))
    return out[:top]


def ratings_csv(review: ReviewSet, items: Sequence[Item], ratings: Sequence[Rating]) -> str:
    """One row per rating (finished or not): the item, both answers, who rated, every score."""
    criteria = [c.name for c in review.spec.parsed_rubric.criteria]
    refs = {"a": review.spec.version_a, "b": review.spec.version_b, "tie": "tie"}
    by_index = {it.index: it for it in items}
    out = io.StringIO()
    writer = csv.writer(out)
    header = ["item", "reviewer", "complete", "preferred", "shown_left"]
    header += [f"{c}_{side}" for c in criteria for side in ("a", "b")]
    writer.writerow([*header, "version_a", "version_b", "prompt", "answer_a", "answer_b"])
    for r in ratings:
        it = by_index[r.item]
        row: list[Any] = [r.item, r.reviewer, int(r.complete), refs.get(r.preference or "", "")]
        row.append(refs["a"] if it.a_on_left else refs["b"])
        row += [r.scores.get(c, {}).get(side, "") for c in criteria for side in ("a", "b")]
        row += [refs["a"], refs["b"], it.prompt, it.answer_a, it.answer_b]
        writer.writerow([csv_cell(v) for v in row])
    return out.getvalue()


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> Any:
    """A text cell a spreadsheet would run as a formula (`=`, `+`, `-`, `@`, tab, CR first) gets a
    leading `'` (OWASP's CSV-injection advice); numbers stay numbers. Not defusedcsv: it leaves
    tab and CR alone and rewrites every `|` in a cell."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def plot(report: ReviewReport, path: Path | io.BytesIO) -> None:
    """Win rate with its interval, and each criterion's mean for A and B with intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4), dpi=100, width_ratios=[1, 2])
    w = report.win_rate
    if w is not None:
        left.bar([0], [w.mean], color="#4c72b0", yerr=[[w.mean - w.low], [w.high - w.mean]], capsize=8)
    left.axhline(0.5, color="grey", linestyle="--", linewidth=1)
    left.set_ylim(0, 1)
    left.set_xticks([0], [f"B over A\n(n={report.ratings})"])
    left.set_title("win rate of B (95% CI)")
    names = [c.name for c in report.criteria]
    for k, (side, color) in enumerate((("a", "#dd8452"), ("b", "#4c72b0"))):
        est = [getattr(c, side) for c in report.criteria]
        means = [e.mean if e else 0.0 for e in est]
        errs = [[e.mean - e.low if e else 0.0 for e in est], [e.high - e.mean if e else 0.0 for e in est]]
        xs = [i + (k - 0.5) * 0.38 for i in range(len(names))]
        label = report.version_a if side == "a" else report.version_b
        right.bar(xs, means, width=0.38, color=color, yerr=errs, capsize=4, label=f"{side.upper()}: {label}")
    right.set_xticks(range(len(names)), names)
    right.set_title("criteria (mean, 95% CI)")
    right.legend(fontsize=8, loc="lower right")
    fig.suptitle(f"human review {report.review}: {report.version_b} vs {report.version_a}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
