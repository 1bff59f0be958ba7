"""Human review sets in the catalog: blind pairs of two versions' answers, who sees which item,
and every rating as it is given.

A review set compares version A with version B on a fixed sample of prompts. Each item holds
both answers and which one is shown on the left (chosen at random when the set is made); the
reviewer sees "answer 1" and "answer 2", never the versions. Each item goes to at most K
reviewers (`reviewers_per_item`): `assign_next` hands a reviewer the next item inside one write
transaction that locks the review set's row, so two reviewers asking at once never make it K+1.
An assignment nobody answered for `HOLD_S` seconds frees its place.

Every answer (one criterion's score for one side, or the preference) is saved by itself
(`rate`): a closed tab loses nothing, and the same reviewer resumes where they stopped. Scores
and preferences are stored per version (`a`/`b`), already un-blinded. The statistics live in
`serving/experiments/review_report.py`; their summary is stored back here (`attach_summary`) and
shown with both versions (`summaries_for`).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from typing import Any

import sqlalchemy as sa

from registry import db as t
from registry.db import CatalogDB
from registry.errors import ConflictError, NotFoundError, RegistryError
from registry.refs import check_name
from registry.rubric import Rubric

HOLD_S = 1800.0
"""An assignment with no answer for this long no longer holds one of the item's K places."""


class RatingError(RegistryError):
    """A rating names an unknown criterion, side or preference, or a score off the scale."""


@dataclass(frozen=True)
class ReviewSpec:
    """What `platform review create` was told (references pinned to `name@N`)."""

    version_a: str
    version_b: str
    rubric: dict[str, Any]
    reviewers_per_item: int = 1
    source: str = ""
    """The data file or traffic the prompts came from."""
    stratify: str = "length"
    seed: int = 0

    @property
    def parsed_rubric(self) -> Rubric:
        return Rubric.from_dict(self.rubric)


@dataclass(frozen=True)
class ReviewSet:
    name: str
    spec: ReviewSpec
    created: float
    items: int
    summary: dict[str, Any] | None


@dataclass(frozen=True)
class NewItem:
    messages: list[dict[str, str]]
    answer_a: str
    answer_b: str
    a_on_left: bool
    stratum: str = ""


@dataclass(frozen=True)
class Item(NewItem):
    review: str = ""
    index: int = 0

    @property
    def prompt(self) -> str:
        """The last user turn (what a reviewer reads first)."""
        users = [m["content"] for m in self.messages if m["role"] == "user"]
        return users[-1] if users else ""

    def side_version(self, side: str) -> str:
        """`a`/`b` (the version) for `left`/`right` (the screen)."""
        left = "a" if self.a_on_left else "b"
        return left if side == "left" else ("b" if left == "a" else "a")


@dataclass(frozen=True)
class Rating:
    review: str
    item: int
    reviewer: str
    scores: dict[str, dict[str, int]]
    """criterion -> {"a": score, "b": score}"""
    preference: str | None
    """`a`, `b` or `tie` (versions, not screen sides)"""
    complete: bool
    updated: float


@dataclass(frozen=True)
class Progress:
    items: int
    reviewers_per_item: int
    complete: int
    """Complete ratings over every reviewer."""
    reviewer_complete: int
    reviewer_skipped: int
    reviewer_open: int
    """Items handed to this reviewer and not finished yet."""
    reviewers: list[str]

    @property
    def target(self) -> int:
        return self.items * self.reviewers_per_item


@dataclass(frozen=True)
class PreferredAnswer:
    """One reviewed item whose reviewers preferred one answer (majority of complete ratings)."""

    review: str
    item: int
    messages: list[dict[str, str]]
    answer: str
    version: str
    rejected: str
    rejected_version: str
    votes: int
    """Complete ratings that preferred `answer`."""
    ratings: int
    side: str = "a"
    """`a` or `b`: the side of the review set that wrote `answer` (`rejected` is the other)."""


def _set(r: Any, items: int) -> ReviewSet:
    return ReviewSet(
        r.name,
        ReviewSpec(**json.loads(r.spec)),
        float(r.created),
        items,
        json.loads(r.summary) if r.summary else None,
    )


def _count(conn: sa.Connection, name: str) -> int:
    ri = t.review_items.c
    return int(conn.execute(sa.select(sa.func.count()).where(ri.review == name)).scalar_one())


def _item(r: Any) -> Item:
    return Item(
        json.loads(r.messages), r.answer_a, r.answer_b, bool(r.a_on_left), r.stratum, r.review, int(r.item)
    )


def _assignments(conn: sa.Connection, name: str, reviewer: str) -> dict[int, tuple[bool, bool]]:
    """item -> (skipped, complete) for one reviewer, in the order they were handed out."""
    ra, rr = t.review_assignments.c, t.review_ratings.c
    query = (
        sa.select(ra.item, ra.skipped, rr.complete)
        .select_from(
            t.review_assignments.outerjoin(
                t.review_ratings,
                sa.and_(rr.review == ra.review, rr.item == ra.item, rr.reviewer == ra.reviewer),
            )
        )
        .where(ra.review == name, ra.reviewer == reviewer)
        .order_by(ra.assigned, ra.item)
    )
    return {int(r.item): (bool(r.skipped), bool(r.complete)) for r in conn.execute(query)}


def _score(
    rubric: Rubric, it: Item, criterion: str | None, side: str | None, score: int | None
) -> tuple[str, str, int]:
    c = rubric.criterion(criterion or "")
    if c is None:
        raise RatingError(
            f"unknown criterion {criterion!r}: one of {', '.join(x.name for x in rubric.criteria)}"
        )
    if side not in ("left", "right"):
        raise RatingError(f"side must be left or right, not {side!r}")
    if score is None or not c.low <= score <= c.high:
        raise RatingError(f"{c.name}: score {score!r} is off the scale {c.low}-{c.high}")
    return c.name, it.side_version(side), score


def _preference(it: Item, preference: str) -> str:
    if preference == "tie":
        return "tie"
    if preference not in ("left", "right"):
        raise RatingError(f"preference must be left, right or tie, not {preference!r}")
    return it.side_version(preference)


def check_reviewer(name: str) -> str:
    """A reviewer's name as typed (trimmed): 1-64 printable characters."""
    name = (name or "").strip()
    if not name or len(name) > 64 or not name.isprintable():
        raise RatingError("a reviewer name is 1-64 printable characters")
    return name


def _rating(r: Any) -> Rating:
    return Rating(
        r.review,
        int(r.item),
        r.reviewer,
        json.loads(r.scores),
        r.preference,
        bool(r.complete),
        float(r.updated),
    )


class ReviewStore:
    """The review sets, their items, assignments and ratings: a small store over the catalog's
    engine, like EvidenceStore and PayloadStore (`Registry.reviews()` hands one out)."""

    def __init__(self, db: CatalogDB) -> None:
        self.db = db

    def create(
        self, name: str, spec: ReviewSpec, items: list[NewItem], now: float | None = None
    ) -> ReviewSet:
        """Store a new review set with its items; refused if the name is taken or there are no items."""
        check_name(name, "review name")
        if not items:
            raise RegistryError(f"review {name!r}: no items to review")
        now = time.time() if now is None else now
        with self.db.write() as conn:
            if conn.execute(sa.select(t.review_sets.c.name).where(t.review_sets.c.name == name)).first():
                raise ConflictError(f"a review named {name!r} exists; choose another name")
            conn.execute(
                sa.insert(t.review_sets).values(
                    name=name,
                    spec=json.dumps(asdict(spec)),
                    version_a=spec.version_a,
                    version_b=spec.version_b,
                    created=now,
                )
            )
            conn.execute(
                sa.insert(t.review_items),
                [
                    {
                        "review": name,
                        "item": i,
                        "messages": json.dumps(it.messages),
                        "answer_a": it.answer_a,
                        "answer_b": it.answer_b,
                        "a_on_left": int(it.a_on_left),
                        "stratum": it.stratum,
                    }
                    for i, it in enumerate(items)
                ],
            )
        return self.get(name)

    def get(self, name: str) -> ReviewSet:
        with self.db.read() as conn:
            row = conn.execute(sa.select(t.review_sets).where(t.review_sets.c.name == name)).first()
            if row is None:
                raise NotFoundError(f"no review named {name!r}")
            return _set(row, _count(conn, name))

    def list_reviews(self) -> list[ReviewSet]:
        with self.db.read() as conn:
            rows = conn.execute(sa.select(t.review_sets).order_by(t.review_sets.c.name)).all()
            return [_set(r, _count(conn, r.name)) for r in rows]

    def items(self, name: str) -> list[Item]:
        ri = t.review_items.c
        with self.db.read() as conn:
            return [
                _item(r)
                for r in conn.execute(sa.select(t.review_items).where(ri.review == name).order_by(ri.item))
            ]

    def item(self, name: str, index: int) -> Item:
        ri = t.review_items.c
        with self.db.read() as conn:
            row = conn.execute(sa.select(t.review_items).where(ri.review == name, ri.item == index)).first()
        if row is None:
            self.get(name)  # no such review: say that
            raise NotFoundError(f"review {name!r} has no item {index}")
        return _item(row)

    def assign_next(self, name: str, reviewer: str, now: float | None = None) -> int | None:
        """The item `reviewer` should see next: their oldest unfinished one, else a new item that has
        fewer than K reviewers (lowest number first). None when nothing is left for them."""
        reviewer = check_reviewer(reviewer)
        now = time.time() if now is None else now
        ra, rr = t.review_assignments.c, t.review_ratings.c
        with self.db.write(bump=False) as conn:
            row = conn.execute(
                sa.select(t.review_sets.c.spec).where(t.review_sets.c.name == name).with_for_update()
            ).first()
            if row is None:
                raise NotFoundError(f"no review named {name!r}")
            k = ReviewSpec(**json.loads(row.spec)).reviewers_per_item
            mine = _assignments(conn, name, reviewer)
            for index, (skipped, complete) in mine.items():
                if not skipped and not complete:
                    return index
            done = sa.and_(
                rr.review == ra.review, rr.item == ra.item, rr.reviewer == ra.reviewer, rr.complete == 1
            )
            holding = (
                sa.select(ra.item, sa.func.count().label("n"))
                .where(
                    ra.review == name,
                    ra.skipped == 0,
                    sa.or_(sa.exists().where(done), ra.assigned > now - HOLD_S),
                )
                .group_by(ra.item)
            )
            taken = {int(r.item): int(r.n) for r in conn.execute(holding)}
            ri = t.review_items.c
            for (index,) in conn.execute(sa.select(ri.item).where(ri.review == name).order_by(ri.item)):
                if index not in mine and taken.get(index, 0) < k:
                    conn.execute(
                        sa.insert(t.review_assignments).values(
                            review=name, item=index, reviewer=reviewer, assigned=now, skipped=0
                        )
                    )
                    return int(index)
        return None

    def history(self, name: str, reviewer: str) -> list[int]:
        """The items handed to `reviewer`, in order (for going back)."""
        with self.db.read() as conn:
            return list(_assignments(conn, name, check_reviewer(reviewer)))

    def skip(self, name: str, index: int, reviewer: str, skipped: bool = True) -> None:
        """Mark an item skipped by `reviewer` (its place goes to another reviewer) or un-skip it."""
        ra = t.review_assignments.c
        with self.db.write(bump=False) as conn:
            done = conn.execute(
                sa.update(t.review_assignments)
                .where(ra.review == name, ra.item == index, ra.reviewer == check_reviewer(reviewer))
                .values(skipped=int(skipped))
            )
        if done.rowcount != 1:
            raise ConflictError(f"item {index} of review {name!r} was not handed to {reviewer!r}")

    def rate(
        self,
        name: str,
        index: int,
        reviewer: str,
        *,
        criterion: str | None = None,
        side: str | None = None,
        score: int | None = None,
        preference: str | None = None,
        now: float | None = None,
    ) -> Rating:
        """Save one answer: a criterion's `score` for a screen `side` (`left`/`right`), or the overall
        `preference` (`left`/`right`/`tie`). Merged into the reviewer's rating of the item at once."""
        reviewer = check_reviewer(reviewer)
        review = self.get(name)
        rubric = review.spec.parsed_rubric
        it = self.item(name, index)
        now = time.time() if now is None else now
        ra, rr = t.review_assignments.c, t.review_ratings.c
        with self.db.write(bump=False) as conn:
            handed = conn.execute(
                sa.select(ra.item).where(ra.review == name, ra.item == index, ra.reviewer == reviewer)
            ).first()
            if handed is None:
                raise ConflictError(f"item {index} of review {name!r} was not handed to {reviewer!r}")
            old = conn.execute(
                sa.select(rr.scores, rr.preference).where(
                    rr.review == name, rr.item == index, rr.reviewer == reviewer
                )
            ).first()
            scores: dict[str, dict[str, int]] = json.loads(old.scores) if old else {}
            pref = old.preference if old else None
            if criterion is not None or side is not None or score is not None:
                crit, version, value = _score(rubric, it, criterion, side, score)
                scores.setdefault(crit, {})[version] = value
            if preference is not None:
                pref = _preference(it, preference)
            complete = pref is not None and all(len(scores.get(c.name, {})) == 2 for c in rubric.criteria)
            values = {
                "review": name,
                "item": index,
                "reviewer": reviewer,
                "scores": json.dumps(scores, sort_keys=True),
                "preference": pref,
                "complete": int(complete),
                "updated": now,
            }
            self.db.upsert(conn, t.review_ratings, values, ["review", "item", "reviewer"])
            conn.execute(
                sa.update(t.review_assignments)
                .where(ra.review == name, ra.item == index, ra.reviewer == reviewer)
                .values(skipped=0)
            )
        return Rating(name, index, reviewer, scores, pref, complete, now)

    def ratings(self, name: str, complete_only: bool = False) -> list[Rating]:
        """Every rating of the review (of its items' current reviewers), ordered by item and reviewer."""
        rr = t.review_ratings.c
        query = sa.select(t.review_ratings).where(rr.review == name)
        if complete_only:
            query = query.where(rr.complete == 1)
        with self.db.read() as conn:
            return [_rating(r) for r in conn.execute(query.order_by(rr.item, rr.reviewer))]

    def rating(self, name: str, index: int, reviewer: str) -> Rating | None:
        rr = t.review_ratings.c
        with self.db.read() as conn:
            row = conn.execute(
                sa.select(t.review_ratings).where(
                    rr.review == name, rr.item == index, rr.reviewer == reviewer
                )
            ).first()
        return None if row is None else _rating(row)

    def progress(self, name: str, reviewer: str | None = None) -> Progress:
        review = self.get(name)
        ra, rr = t.review_assignments.c, t.review_ratings.c
        with self.db.read() as conn:
            complete = conn.execute(
                sa.select(sa.func.count()).where(rr.review == name, rr.complete == 1)
            ).scalar_one()
            people = [r[0] for r in conn.execute(sa.select(ra.reviewer).where(ra.review == name).distinct())]
            mine = _assignments(conn, name, reviewer) if reviewer else {}
        return Progress(
            review.items,
            review.spec.reviewers_per_item,
            int(complete),
            sum(1 for _, c in mine.values() if c),
            sum(1 for s, c in mine.values() if s and not c),
            sum(1 for s, c in mine.values() if not s and not c),
            sorted(people),
        )

    def attach_summary(self, name: str, summary: dict[str, Any], now: float | None = None) -> None:
        """Store the report's summary with the review set (shown with both versions)."""
        with self.db.write() as conn:
            conn.execute(
                sa.update(t.review_sets)
                .where(t.review_sets.c.name == name)
                .values(
                    summary=json.dumps(summary, default=str), summarized=time.time() if now is None else now
                )
            )

    def summaries_for(self, ref: str) -> list[dict[str, Any]]:
        """The stored summaries of every review that compared the version `ref` (`name@N`), each with
        `review`, `role` (`a` or `b`) and `against`."""
        rs = t.review_sets.c
        with self.db.read() as conn:
            rows = conn.execute(
                sa.select(rs.name, rs.version_a, rs.version_b, rs.summary)
                .where(sa.or_(rs.version_a == ref, rs.version_b == ref), rs.summary.is_not(None))
                .order_by(rs.created)
            ).all()
        out = []
        for r in rows:
            role = "a" if r.version_a == ref else "b"
            against = r.version_b if role == "a" else r.version_a
            out.append({"review": r.name, "role": role, "against": against, **json.loads(r.summary)})
        return out

    def preferred(self, name: str | None = None, version: str | None = None) -> list[PreferredAnswer]:
        """Per reviewed item, the prompt and the answer its reviewers preferred (a strict majority of
        complete ratings; ties and split votes are left out), with the version that wrote it.
        `name` limits to one review set, `version` (`name@N`) to answers that version wrote."""
        sets = [self.get(name)] if name else self.list_reviews()
        out: list[PreferredAnswer] = []
        for review in sets:
            by_item: dict[int, list[str]] = {}
            for r in self.ratings(review.name, complete_only=True):
                by_item.setdefault(r.item, []).append(r.preference or "tie")
            refs = {"a": review.spec.version_a, "b": review.spec.version_b}
            for it in self.items(review.name):
                votes = by_item.get(it.index, [])
                for winner, loser in (("a", "b"), ("b", "a")):
                    n = votes.count(winner)
                    if votes and n * 2 > len(votes) and version in (None, refs[winner]):
                        answers = {"a": it.answer_a, "b": it.answer_b}
                        out.append(
                            PreferredAnswer(
                                review.name,
                                it.index,
                                it.messages,
                                answers[winner],
                                refs[winner],
                                answers[loser],
                                refs[loser],
                                n,
                                len(votes),
                                winner,
                            )
                        )
        return out
