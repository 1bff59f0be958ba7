"""A/B evidence rows: one row per routed request, plus user feedback, in `<registry>/evidence.sqlite`.

This module owns the tables and their SQL; the server's batching writer thread lives in
`serving/experiments/evidence.py`, the statistics and the report beside it. SQLite errors
become `StorageError` here, so callers never see a backend's own exception types.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Any

from registry.errors import StorageError

SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    id TEXT PRIMARY KEY, ts REAL NOT NULL, route TEXT NOT NULL, variant TEXT NOT NULL, user_hash TEXT,
    latency_s REAL, ttft_s REAL, prompt_tokens INTEGER, completion_tokens INTEGER, status TEXT NOT NULL,
    shadow INTEGER NOT NULL DEFAULT 0, output TEXT);
CREATE INDEX IF NOT EXISTS requests_route ON requests (route, variant);
CREATE TABLE IF NOT EXISTS feedback (
    completion_id TEXT NOT NULL, ts REAL NOT NULL, route TEXT NOT NULL, variant TEXT NOT NULL,
    score REAL, thumbs INTEGER, comment TEXT);
CREATE INDEX IF NOT EXISTS feedback_route ON feedback (route, variant);
"""


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


def evidence_path(registry_root: Path) -> Path:
    return Path(registry_root) / "evidence.sqlite"


class EvidenceStore:
    """The evidence tables of one registry (SQLite). Safe to share between threads."""

    def __init__(self, path: Path, timeout_s: float = 30.0) -> None:
        self.path = Path(path)
        self.timeout_s = timeout_s
        """How long a write waits for another writer's lock before it fails (and is retried)."""
        self._lock = threading.Lock()
        self._writer: sqlite3.Connection | None = None

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=self.timeout_s, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)
        except BaseException:
            db.close()
            raise
        return db

    @contextmanager
    def _session(self) -> Iterator[sqlite3.Connection]:
        """A short-lived connection; SQLite errors leave as StorageError."""
        try:
            db = self._connect()
            try:
                yield db
            finally:
                db.close()
        except sqlite3.Error as exc:
            raise StorageError(f"evidence database: {exc}") from exc

    def insert_requests(self, records: Sequence[RequestRecord]) -> None:
        """Insert (or replace) request rows in one transaction, on a connection kept open for this."""
        with self._lock:
            try:
                if self._writer is None:
                    self._writer = self._connect()
                with self._writer:  # one transaction: all rows or none
                    self._writer.execute("BEGIN")
                    self._writer.executemany(
                        "INSERT OR REPLACE INTO requests VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                        [astuple(r) for r in records],
                    )
            except sqlite3.Error as exc:
                self._close_writer()  # the next attempt reconnects (the file may have been replaced)
                raise StorageError(f"evidence database: {exc}") from exc

    def add_feedback(
        self,
        completion_id: str,
        route: str,
        variant: str,
        score: float | None,
        thumbs: int | None,
        comment: str | None,
    ) -> None:
        with self._session() as db:
            db.execute(
                "INSERT INTO feedback VALUES (?,?,?,?,?,?,?)",
                (completion_id, time.time(), route, variant, score, thumbs, comment),
            )

    def find_request(self, completion_id: str) -> tuple[str, str] | None:
        """(route, variant) of a live (not shadow) request."""
        with self._session() as db:
            row = db.execute(
                "SELECT route, variant FROM requests WHERE id=? AND shadow=0", (completion_id,)
            ).fetchone()
        return (row[0], row[1]) if row else None

    def load(self, route: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """All request and feedback rows of a route, oldest first."""
        with self._session() as db:
            db.row_factory = sqlite3.Row
            reqs = [dict(r) for r in db.execute("SELECT * FROM requests WHERE route=? ORDER BY ts", (route,))]
            fb = [dict(r) for r in db.execute("SELECT * FROM feedback WHERE route=? ORDER BY ts", (route,))]
        return reqs, fb

    def _close_writer(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def close(self) -> None:
        with self._lock:
            self._close_writer()


def load(path: Path, route: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """All request and feedback rows of a route in the evidence database at `path`."""
    return EvidenceStore(path).load(route)
