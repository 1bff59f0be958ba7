"""Review invites: each reviewer's own bearer token for the review pages, revocable by an admin.

A token is 32 random bytes (URL-safe text) shown once when it is made; the catalog keeps only
its sha256, so a copy of the database does not sign anyone in. A token names one reviewer: the
pages let its holder rate as that reviewer only, and never reach `/admin` (which takes the admin
key alone). Revoking a reviewer ends every token they hold at the next request.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass

import sqlalchemy as sa

from registry import db as t
from registry.db import CatalogDB
from registry.errors import NotFoundError
from registry.reviews import check_reviewer


@dataclass(frozen=True)
class Invite:
    reviewer: str
    created: float
    revoked: float | None


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class InviteStore:
    """Each reviewer's invite tokens (their sha256): a small store over the catalog's engine, like
    ReviewStore (`Registry.invites()` hands one out)."""

    def __init__(self, db: CatalogDB) -> None:
        self.db = db

    def invite(self, reviewer: str, now: float | None = None) -> str:
        """A new token for `reviewer` (their earlier tokens stay valid until revoked)."""
        reviewer = check_reviewer(reviewer)
        token = secrets.token_urlsafe(32)
        with self.db.write(bump=False) as conn:
            conn.execute(
                sa.insert(t.review_invites).values(
                    token_sha256=_digest(token),
                    reviewer=reviewer,
                    created=time.time() if now is None else now,
                    revoked=None,
                )
            )
        return token

    def reviewer_for(self, token: str) -> str | None:
        """The reviewer a token signs in, or None (unknown or revoked)."""
        ri = t.review_invites.c
        with self.db.read() as conn:
            row = conn.execute(
                sa.select(ri.reviewer).where(ri.token_sha256 == _digest(token), ri.revoked.is_(None))
            ).first()
        return None if row is None else str(row.reviewer)

    def revoke(self, reviewer: str, now: float | None = None) -> int:
        """Revoke every live token of `reviewer`; how many. NotFoundError if they hold none."""
        ri = t.review_invites.c
        with self.db.write(bump=False) as conn:
            done = conn.execute(
                sa.update(t.review_invites)
                .where(ri.reviewer == check_reviewer(reviewer), ri.revoked.is_(None))
                .values(revoked=time.time() if now is None else now)
            )
        if not done.rowcount:
            raise NotFoundError(f"{reviewer!r} holds no live invite")
        return int(done.rowcount)

    def invites(self) -> list[Invite]:
        """Every invite, oldest first (tokens are not stored, so not shown)."""
        ri = t.review_invites.c
        with self.db.read() as conn:
            rows = conn.execute(sa.select(ri.reviewer, ri.created, ri.revoked).order_by(ri.created)).all()
        return [
            Invite(r.reviewer, float(r.created), None if r.revoked is None else float(r.revoked))
            for r in rows
        ]
