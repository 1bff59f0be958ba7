"""Logged payloads in the catalog database: completions a server was told to log, and feedback.

`platform serve --log-payloads NAME` logs the requests of those adapters and A/B routes (prompt
or messages, the answer, the version that served, timing); the server's batching writer lives in
`serving/payloads.py`. Feedback on a logged completion is kept beside it (one per completion:
a later one replaces the earlier). `platform data export` and `platform monitor` read these rows. Like evidence
rows, payload writes do not move the change counter. Database errors leave as `StorageError`.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import sqlalchemy as sa

from registry import db as t
from registry.db import CatalogDB, storable


@dataclass(frozen=True)
class PayloadRecord:
    """One logged completion (choice 0 when the request asked for several)."""

    id: str
    ts: float
    name: str
    """The adapter or A/B route name the request asked for."""
    version: str
    """The version that answered (`name@N`), or the base model's served name."""
    request: str
    """JSON: `{"messages": [...]}` (chat) or `{"prompt": "..."}` (completions)."""
    completion: str | None
    finish_reason: str | None
    status: str
    latency_s: float | None
    ttft_s: float | None
    prompt_tokens: int
    completion_tokens: int
    prompt_sha256: str | None = None
    """`prompt_digest` of the last user message (or prompt) before redaction: what the export's
    held-out leakage check compares, since redaction changes the text itself."""
    key_hash: str | None = None
    """HMAC of the API key that made the request: feedback must come with the same key."""

    def request_json(self) -> dict[str, Any]:
        value = json.loads(self.request)
        return value if isinstance(value, dict) else {}


def prompt_digest(text: str) -> str:
    """sha256 of a prompt's text with line endings, trailing spaces and outer blank space normalized
    (as training cleans it): training records its held-out rows this way, logging its prompts."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = "\n".join(re.sub(r"[ \t]+$", "", line) for line in text.split("\n")).strip()
    return hashlib.sha256(text.encode()).hexdigest()


def last_user_text(request: dict[str, Any]) -> str | None:
    """The prompt of a logged request (`{"prompt": ...}`), or its last user message."""
    if isinstance(request.get("prompt"), str):
        return str(request["prompt"])
    users = [
        m.get("content")
        for m in request.get("messages") or []
        if isinstance(m, dict) and m.get("role") == "user"
    ]
    return users[-1] if users and isinstance(users[-1], str) else None


@dataclass(frozen=True)
class LoggedCompletion:
    """A logged completion with its latest feedback, as export and drift read it."""

    record: PayloadRecord
    thumbs: int | None = None
    """1 up, 0 down, None without thumbs feedback."""
    score: float | None = None


class PayloadStore:
    """The payload rows of one registry. Safe to share between threads."""

    def __init__(self, db: CatalogDB) -> None:
        self.db = db

    def insert(self, records: Sequence[PayloadRecord]) -> None:
        """Insert (or replace) rows in one transaction: all of them or none."""
        if not records:
            return
        with self.db.write(bump=False) as conn:
            conn.execute(sa.delete(t.payloads).where(t.payloads.c.id.in_([r.id for r in records])))
            conn.execute(sa.insert(t.payloads), [storable(asdict(r)) for r in records])

    def exists(self, completion_id: str) -> bool:
        return self.owner(completion_id)[0]

    def owner(self, completion_id: str) -> tuple[bool, str | None]:
        """Whether the completion was logged, and the key_hash it was logged with."""
        p = t.payloads.c
        with self.db.read() as conn:
            row = conn.execute(sa.select(p.id, p.key_hash).where(p.id == completion_id)).first()
        return (False, None) if row is None else (True, row[1])

    def add_feedback(
        self, completion_id: str, score: float | None, thumbs: int | None, comment: str | None
    ) -> None:
        """Store the feedback on a completion, replacing any it had."""
        row = {"completion_id": completion_id, "ts": time.time(), "score": score, "thumbs": thumbs}
        f = t.payload_feedback.c
        with self.db.write(bump=False) as conn:
            conn.execute(sa.delete(t.payload_feedback).where(f.completion_id == completion_id))
            conn.execute(sa.insert(t.payload_feedback).values(**storable({**row, "comment": comment})))

    def purge(self, before: float) -> int:
        """Delete rows logged before `before` (Unix time) and their feedback; how many rows went."""
        p, f = t.payloads.c, t.payload_feedback.c
        with self.db.write(bump=False) as conn:
            old = sa.select(p.id).where(p.ts < before)
            conn.execute(sa.delete(t.payload_feedback).where(f.completion_id.in_(old)))
            return int(conn.execute(sa.delete(t.payloads).where(p.ts < before)).rowcount or 0)

    def completions(
        self, name: str, version: str | None = None, since: float | None = None
    ) -> list[LoggedCompletion]:
        """Logged completions of an adapter or route `name` (or only those `version` answered),
        oldest first, each with its latest feedback."""
        p = t.payloads.c
        where = [sa.or_(p.name == name, p.version.like(f"{name}@%"))]
        if version is not None:
            where.append(p.version == version)
        if since is not None:
            where.append(p.ts >= since)
        with self.db.read() as conn:
            rows = [
                dict(r._mapping) for r in conn.execute(sa.select(t.payloads).where(*where).order_by(p.ts))
            ]
            feedback = self._feedback(conn, [r["id"] for r in rows])
        out = []
        for r in rows:
            thumbs, score = feedback.get(r["id"], (None, None))
            out.append(LoggedCompletion(PayloadRecord(**r), thumbs, score))
        return out

    def versions(self, name: str) -> list[str]:
        """The versions that answered logged requests of `name`, in order of first appearance."""
        p = t.payloads.c
        stmt = (
            sa.select(p.version, sa.func.min(p.ts).label("first"))
            .where(sa.or_(p.name == name, p.version.like(f"{name}@%")))
            .group_by(p.version)
            .order_by("first")
        )
        with self.db.read() as conn:
            return [str(r[0]) for r in conn.execute(stmt)]

    @staticmethod
    def _feedback(conn: sa.Connection, ids: list[str]) -> dict[str, tuple[int | None, float | None]]:
        """The thumbs and score of each id's latest feedback (a later feedback replaces the earlier)."""
        f = t.payload_feedback.c
        latest: dict[str, tuple[int | None, float | None]] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            stmt = (
                sa.select(f.completion_id, f.thumbs, f.score).where(f.completion_id.in_(chunk)).order_by(f.ts)
            )
            for cid, thumbs, score in conn.execute(stmt):
                latest[cid] = (
                    None if thumbs is None else int(thumbs),
                    None if score is None else float(score),
                )
        return latest
