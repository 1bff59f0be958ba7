"""Per-variant evidence of A/B routes: one row per routed request, plus user feedback.

Servers write through `EvidenceWriter`: records go to an in-memory queue and a background
thread inserts them in batches, so the request path never waits on SQLite. The report reads
the same database (`<registry>/evidence.sqlite`).
"""

from __future__ import annotations

import queue
import sqlite3
import threading
import time
from collections import OrderedDict
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Any

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


def connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(SCHEMA)
    return db


def evidence_path(registry_root: Path) -> Path:
    return Path(registry_root) / "evidence.sqlite"


class EvidenceWriter:
    """Batched, off-the-hot-path writer; `record()` only enqueues."""

    def __init__(self, path: Path, flush_interval_s: float = 0.25, batch: int = 256) -> None:
        self.path = path
        self.flush_interval_s = flush_interval_s
        self.batch = batch
        self._queue: queue.Queue[RequestRecord | None] = queue.Queue()
        self._recent: OrderedDict[str, tuple[str, str]] = OrderedDict()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="evidence-writer", daemon=True)
        self._thread.start()

    def record(self, rec: RequestRecord) -> None:
        if not rec.shadow:
            with self._lock:
                self._recent[rec.id] = (rec.route, rec.variant)
                while len(self._recent) > 100_000:
                    self._recent.popitem(last=False)
        self._queue.put(rec)

    def lookup(self, completion_id: str) -> tuple[str, str] | None:
        """(route, variant) that answered a completion id, from memory or the database."""
        with self._lock:
            if completion_id in self._recent:
                return self._recent[completion_id]
        db = connect(self.path)
        try:
            row = db.execute(
                "SELECT route, variant FROM requests WHERE id=? AND shadow=0", (completion_id,)
            ).fetchone()
        finally:
            db.close()
        return (row[0], row[1]) if row else None

    def feedback(
        self,
        completion_id: str,
        route: str,
        variant: str,
        score: float | None,
        thumbs: int | None,
        comment: str | None,
    ) -> None:
        db = connect(self.path)
        try:
            db.execute(
                "INSERT INTO feedback VALUES (?,?,?,?,?,?,?)",
                (completion_id, time.time(), route, variant, score, thumbs, comment),
            )
        finally:
            db.close()

    def _run(self) -> None:
        db = connect(self.path)
        pending: list[RequestRecord] = []
        stop = False
        while not stop:
            try:
                item = self._queue.get(timeout=self.flush_interval_s)
                if item is None:
                    stop = True
                else:
                    pending.append(item)
                    while len(pending) < self.batch:
                        nxt = self._queue.get_nowait()
                        if nxt is None:
                            stop = True
                            break
                        pending.append(nxt)
            except queue.Empty:
                pass
            if pending:
                db.executemany(
                    "INSERT OR REPLACE INTO requests VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                    [astuple(r) for r in pending],
                )
                pending = []
        db.close()

    def flush(self, timeout_s: float = 10) -> None:
        """Wait until everything queued so far is written (tests, shutdown)."""
        deadline = time.monotonic() + timeout_s
        while not self._queue.empty() and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(self.flush_interval_s * 2)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)


def load(path: Path, route: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """All request and feedback rows of a route."""
    db = connect(path)
    db.row_factory = sqlite3.Row
    try:
        reqs = [dict(r) for r in db.execute("SELECT * FROM requests WHERE route=? ORDER BY ts", (route,))]
        fb = [dict(r) for r in db.execute("SELECT * FROM feedback WHERE route=? ORDER BY ts", (route,))]
    finally:
        db.close()
    return reqs, fb
