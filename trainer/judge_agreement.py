"""How far to trust the judge: its agreement with people who reviewed the same pair.

A human review (`platform review create`, registry/reviews.py) of the same two versions, in
either order, shares the rows whose conversation is the same as an evaluated row's. On those rows
the judge's outcome (`a`, `b`, `tie`, both orders combined) is compared with the people's (the
majority of complete ratings; no majority: `tie`) by Cohen's kappa (scikit-learn), with the raw
share of agreement beside it. Rows the judge could not parse are left out.
"""

from __future__ import annotations

import json
import math
import warnings
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from registry.rubric import Rubric

if TYPE_CHECKING:
    from registry.reviews import ReviewSet
    from registry.store import Registry
    from trainer.judge import JudgeReport


@dataclass(frozen=True)
class Agreement:
    review: str
    shared: int
    """Rows both the people and the judge decided."""
    agreement: float
    """Share of those rows with the same outcome."""
    kappa: float | None
    """Cohen's kappa; None when it is undefined (both sides gave one and the same outcome throughout)."""

    def summary(self) -> str:
        kappa = "undefined (one outcome throughout)" if self.kappa is None else f"{self.kappa:.3f}"
        return (
            f"agreement with people (review {self.review}, {self.shared} shared rows): "
            f"Cohen's kappa {kappa}, same outcome on {self.agreement:.0%}"
        )


def _key(messages: Any) -> str:
    return json.dumps([[m["role"], m["content"]] for m in messages])


def _pinned(reg: Registry, ref: str) -> str | None:
    if ref == "base":
        return None
    name, number = reg.resolve(ref)
    return f"{name}@{number}"


def matching_reviews(reg: Registry, refs: tuple[str, str]) -> list[tuple[ReviewSet, bool]]:
    """Review sets of the pair `refs`, each with whether its A is our B (the sides are swapped)."""
    a, b = (_pinned(reg, r) for r in refs)
    if a is None or b is None:
        return []
    out = []
    for review in reg.reviews().list_reviews():
        pair = (review.spec.version_a, review.spec.version_b)
        if pair in ((a, b), (b, a)):
            out.append((review, pair == (b, a)))
    return out


def review_rubric(reg: Registry, refs: tuple[str, str]) -> Rubric | None:
    """The rubric of the first review of the pair (the judge then rates what the people rated)."""
    found = matching_reviews(reg, refs)
    return found[0][0].spec.parsed_rubric if found else None


def human_outcomes(reg: Registry, review: ReviewSet, swapped: bool) -> dict[str, str]:
    """Conversation -> `a`/`b`/`tie` in the evaluation's orientation, for rows people completed."""
    votes: dict[int, list[str]] = {}
    for r in reg.reviews().ratings(review.name, complete_only=True):
        votes.setdefault(r.item, []).append(r.preference or "tie")
    flip = {"a": "b", "b": "a", "tie": "tie"}
    out = {}
    for item in reg.reviews().items(review.name):
        if item.index not in votes:
            continue
        (top, n), *rest = Counter(votes[item.index]).most_common()
        label = top if not rest or rest[0][1] < n else "tie"
        out[_key(item.messages)] = flip[label] if swapped else label
    return out


def agreement(reg: Registry, report: JudgeReport) -> list[Agreement]:
    """The judge's agreement with every review of the same pair that shares rows with `report`."""
    from sklearn.metrics import cohen_kappa_score

    out = []
    for review, swapped in matching_reviews(reg, (report.first, report.second)):
        people = human_outcomes(reg, review, swapped)
        pairs = [
            (people[_key(r.messages)], r.outcome)
            for r in report.rows
            if r.outcome is not None and _key(r.messages) in people
        ]
        if not pairs:
            continue
        humans, judge = [p[0] for p in pairs], [p[1] for p in pairs]
        with warnings.catch_warnings():  # one outcome throughout: 0/0, reported as undefined
            warnings.simplefilter("ignore", RuntimeWarning)
            kappa = float(cohen_kappa_score(humans, judge, labels=["a", "b", "tie"]))
        same = sum(h == j for h, j in pairs) / len(pairs)
        out.append(Agreement(review.name, len(pairs), same, None if math.isnan(kappa) else kappa))
    return out
