"""The server's evidence writer: one row per routed request, written off the request path.

`record()` puts a row on a bounded in-memory queue and a background thread inserts them in
batches through the registry's `EvidenceStore`, so the request path never waits on the database.
A batch that fails (database locked, read-only, disk full, file gone) goes back to the head of
the queue and is retried with exponential backoff; while the database stays unwritable the
queue keeps the newest `max_queue` rows and counts the older ones it drops. `stats()` says how
the writer is doing, for `/metrics` and `/health`.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from registry.errors import StorageError
from registry.evidence_store import EvidenceStore, RequestRecord

__all__ = ["EvidenceCounters", "EvidenceStats", "EvidenceWriter", "RequestRecord"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvidenceStats:
    """How the writer is doing."""

    writing: bool
    """False while the last batch failed (or the thread is gone): evidence is not being written."""
    written: int
    queued: int
    write_failures: int
    """Failed batch writes (each is retried)."""
    dropped: int
    """Rows dropped, oldest first, because the queue was full (or still unwritten at shutdown)."""


class EvidenceWriter:
    """Batched, off-the-hot-path writer; `record()` only enqueues and never blocks."""

    def __init__(
        self,
        store: EvidenceStore,
        flush_interval_s: float = 0.25,
        batch: int = 256,
        max_queue: int = 100_000,
        max_backoff_s: float = 30.0,
    ) -> None:
        self.store = store
        self.flush_interval_s = flush_interval_s
        self.batch = batch
        self.max_queue = max_queue
        self.max_backoff_s = max_backoff_s
        self._queue: deque[RequestRecord] = deque()
        self._recent: OrderedDict[str, tuple[str, str]] = OrderedDict()
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._closing = False
        self._failing = False
        self._written = self._failures = self._dropped = 0
        self._thread = threading.Thread(target=self._run, name="evidence-writer", daemon=True)
        self._thread.start()

    def record(self, rec: RequestRecord) -> None:
        with self._lock:
            if not rec.shadow:
                self._recent[rec.id] = (rec.route, rec.variant)
                while len(self._recent) > 100_000:
                    self._recent.popitem(last=False)
            self._queue.append(rec)
            self._trim()
            self._wake.notify()

    def _trim(self) -> None:
        """Drop the oldest rows beyond `max_queue` (caller holds the lock)."""
        while len(self._queue) > self.max_queue:
            self._queue.popleft()
            self._dropped += 1

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

    def stats(self) -> EvidenceStats:
        with self._lock:
            return EvidenceStats(
                writing=not self._failing and self._thread.is_alive(),
                written=self._written,
                queued=len(self._queue),
                write_failures=self._failures,
                dropped=self._dropped,
            )

    def _take(self) -> tuple[list[RequestRecord], bool]:
        """Wait for rows (or the flush interval), then take up to one batch; True once closing."""
        with self._lock:
            if not self._queue and not self._closing:
                self._wake.wait(self.flush_interval_s)
            n = min(self.batch, len(self._queue))
            return [self._queue.popleft() for _ in range(n)], self._closing

    def _put_back(self, rows: list[RequestRecord]) -> None:
        with self._lock:
            self._queue.extendleft(reversed(rows))
            self._trim()

    def _write(self, rows: list[RequestRecord]) -> bool:
        try:
            self.store.insert_requests(rows)
        except Exception as exc:  # the thread must outlive any failure; StorageError is the usual one
            with self._lock:
                self._failures += 1
                self._failing = True
            level = logging.WARNING if isinstance(exc, StorageError) else logging.ERROR
            log.log(level, "evidence: writing %d rows failed (%s); will retry", len(rows), exc, exc_info=True)
            return False
        with self._lock:
            self._written += len(rows)
            self._failing = False
        return True

    def _run(self) -> None:
        backoff = self.flush_interval_s
        while True:
            rows, closing = self._take()
            if not rows:
                if closing:
                    break
                continue
            if self._write(rows):
                backoff = self.flush_interval_s
                continue
            if closing:  # one failed attempt at shutdown: count what is left as dropped
                with self._lock:
                    self._dropped += len(rows) + len(self._queue)
                    self._queue.clear()
                break
            self._put_back(rows)
            with self._lock:
                self._wake.wait_for(lambda: self._closing, timeout=backoff)
            backoff = min(backoff * 2, self.max_backoff_s)
        self.store.close()

    def close(self) -> None:
        """Write what is queued (one attempt if the database is failing), then stop the thread."""
        with self._lock:
            self._closing = True
            self._wake.notify()
        self._thread.join(timeout=10)


class EvidenceCounters(Collector):
    """Prometheus view of a writer's `stats()`, refreshed by `observe()` before each scrape."""

    def __init__(self) -> None:
        self._stats: EvidenceStats | None = None

    def observe(self, stats: EvidenceStats | None) -> None:
        self._stats = stats

    def collect(self) -> Iterable[CounterMetricFamily | GaugeMetricFamily]:
        s = self._stats or EvidenceStats(True, 0, 0, 0, 0)
        yield CounterMetricFamily(
            "lora_evidence_write_failures", "Failed A/B evidence batch writes (retried)", s.write_failures
        )
        yield CounterMetricFamily(
            "lora_evidence_dropped",
            "A/B evidence rows dropped (queue full or unwritten at shutdown)",
            s.dropped,
        )
        yield GaugeMetricFamily("lora_evidence_queued", "A/B evidence rows waiting to be written", s.queued)
        yield GaugeMetricFamily(
            "lora_evidence_writing", "1 while A/B evidence is being written, 0 while writes fail", s.writing
        )
