"""The server's evidence writer: one row per routed request, written off the request path.

`record()` puts a row on an in-memory queue and a background thread inserts them in batches
through the registry's `EvidenceStore`, so the request path never waits on the database.
"""

from __future__ import annotations

import queue
import threading
from collections import OrderedDict
from pathlib import Path

from registry.evidence_store import EvidenceStore, RequestRecord, evidence_path

__all__ = ["EvidenceWriter", "RequestRecord", "evidence_path"]


class EvidenceWriter:
    """Batched, off-the-hot-path writer; `record()` only enqueues."""

    def __init__(self, path: Path, flush_interval_s: float = 0.25, batch: int = 256) -> None:
        self.store = EvidenceStore(path)
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
        return self.store.find_request(completion_id)

    def feedback(
        self,
        completion_id: str,
        route: str,
        variant: str,
        score: float | None,
        thumbs: int | None,
        comment: str | None,
    ) -> None:
        self.store.add_feedback(completion_id, route, variant, score, thumbs, comment)

    def _run(self) -> None:
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
                self.store.insert_requests(pending)
                pending = []
        self.store.close()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)
