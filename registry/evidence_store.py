"""A/B evidence rows in the catalog database: one row per routed request, plus user feedback.

One feedback per completion: a later one replaces the earlier (`add_feedback`), and `load` hands
out only the latest per completion id, so the report and the rollout gates count distinct
completions even in rows written before this rule or by replicas racing each other.

This module owns the rows and their SQL; the server's batching writer thread lives in
`serving/experiments/evidence.py`, the statistics and the report beside it. Evidence writes do
not move the change counter (servers would otherwise refresh on every request). Database errors
leave as `StorageError` (`UnavailableError` when the database cannot be reached).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import sqlalchemy as sa

from registry import db as t
from registry.db import CatalogDB, storable


@dataclass(frozen=True)
class RequestRecord:
    """One routed request (or its shadow copy) as the report sees it."""

    id: str
    ts: float
    route: str
    variant: str
    user_hash: str | None
    latency_s: float
    ttft_s: float | None
    prompt_tokens: int
    completion_tokens: int
    status: str
    shadow: int = 0
    output: str | None = None
    """A shadow copy's answer (redacted; cleared after the payload retention by `purge_text`)."""
    key_hash: str | None = None
    """HMAC of the API key that made the request: feedback must come with the same key."""


class EvidenceStore:
    """The evidence rows of one registry. Safe to share between threads."""

    def __init__(self, db: CatalogDB) -> None:
        self.db = db

    def insert_requests(self, records: Sequence[RequestRecord]) -> None:
        """Insert (or replace) request rows in one transaction: all of them or none."""
        if not records:
            return
        with self.db.write(bump=False) as conn:
            ids = [r.id for r in records]
            conn.execute(sa.delete(t.requests).where(t.requests.c.id.in_(ids)))
            conn.execute(sa.insert(t.requests), [storable(asdict(r)) for r in records])

    def add_feedback(
        self,
        completion_id: str,
        route: str,
        variant: str,
        score: float | None,
        thumbs: int | None,
        comment: str | None,
    ) -> None:
        row = {
            "completion_id": completion_id,
            "ts": time.time(),
            "route": route,
            "variant": variant,
            "score": score,
            "thumbs": thumbs,
            "comment": comment,
        }
        with self.db.write(bump=False) as conn:
            conn.execute(sa.delete(t.feedback).where(t.feedback.c.completion_id == completion_id))
            conn.execute(sa.insert(t.feedback).values(**storable(row)))

    def find_request(self, completion_id: str) -> tuple[str, str, str | None] | None:
        """(route, variant, key_hash) of a live (not shadow) request."""
        q = t.requests.c
        with self.db.read() as conn:
            row = conn.execute(
                sa.select(q.route, q.variant, q.key_hash).where(q.id == completion_id, q.shadow == 0)
            ).first()
        return (row[0], row[1], row[2]) if row else None

    def purge_text(self, before: float) -> int:
        """Clear the free text kept before `before` (Unix time): shadow answers and feedback
        comments. The numbers stay (the report and the gates read them); how many rows changed."""
        q, f = t.requests.c, t.feedback.c
        with self.db.write(bump=False) as conn:
            a = conn.execute(
                sa.update(t.requests).where(q.ts < before, q.output.is_not(None)).values(output=None)
            ).rowcount
            b = conn.execute(
                sa.update(t.feedback).where(f.ts < before, f.comment.is_not(None)).values(comment=None)
            ).rowcount
        return int(a or 0) + int(b or 0)

    def load(self, route: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """All request and feedback rows of a route, oldest first."""
        with self.db.read() as conn:
            reqs = conn.execute(
                sa.select(t.requests).where(t.requests.c.route == route).order_by(t.requests.c.ts)
            )
            fb = conn.execute(
                sa.select(t.feedback).where(t.feedback.c.route == route).order_by(t.feedback.c.ts)
            )
            return [dict(r._mapping) for r in reqs], latest_per_completion([dict(r._mapping) for r in fb])

    def copy_from(self, other: EvidenceStore) -> tuple[int, int]:
        """Copy every request and feedback row of `other` that this store lacks; (requests, feedback)."""
        with other.db.read() as conn:
            reqs = [dict(r._mapping) for r in conn.execute(sa.select(t.requests))]
            fb = [dict(r._mapping) for r in conn.execute(sa.select(t.feedback))]
        with self.db.read() as conn:
            have_reqs = set(conn.execute(sa.select(t.requests.c.id)).scalars())
            f = t.feedback.c
            have_fb = {(r[0], r[1]) for r in conn.execute(sa.select(f.completion_id, f.ts))}
        new_reqs = [r for r in reqs if r["id"] not in have_reqs]
        new_fb = [r for r in fb if (r["completion_id"], r["ts"]) not in have_fb]
        with self.db.write(bump=False) as conn:
            for start in range(0, len(new_reqs), 1000):
                conn.execute(sa.insert(t.requests), new_reqs[start : start + 1000])
            for start in range(0, len(new_fb), 1000):
                conn.execute(sa.insert(t.feedback), new_fb[start : start + 1000])
        return len(new_reqs), len(new_fb)

    def close(self) -> None:
        """Nothing to close: connections belong to the catalog's pool."""


def latest_per_completion(feedback: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The latest of each completion's feedback rows (rows oldest first), in order."""
    latest = {f["completion_id"]: f for f in feedback}
    return sorted(latest.values(), key=lambda f: f["ts"])
