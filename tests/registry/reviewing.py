"""A finished human review for tests: one reviewer completes every item, preferring version A
(or the version `preferences` names per item)."""

from __future__ import annotations

from collections.abc import Sequence

from registry.store import Registry

CRITERIA = ("correctness", "format", "tone")
"""The default rubric's criteria."""


def finish_review(reg: Registry, review: str, reviewer: str = "ann", preferences: Sequence[str] = ()) -> None:
    """`reviewer` rates every item of `review`: the preferred version's answer 5 on each criterion,
    the other's 2 (a tie: 3 both), and prefers `preferences[i]` (`a`, `b` or `tie`; default `a`)."""
    reviews = reg.reviews()
    for index in range(reviews.get(review).items):
        assert reviews.assign_next(review, reviewer) == index
        wanted = preferences[index] if index < len(preferences) else "a"
        item = reviews.item(review, index)
        left = item.side_version("left")
        for criterion in CRITERIA:
            for side in ("left", "right"):
                score = 3 if wanted == "tie" else 5 if item.side_version(side) == wanted else 2
                reviews.rate(review, index, reviewer, criterion=criterion, side=side, score=score)
        reviews.rate(
            review,
            index,
            reviewer,
            preference="tie" if wanted == "tie" else ("left" if left == wanted else "right"),
        )
