"""The server's evidence writer: one row per routed request, written off the request path.

A `serving.batching.BatchWriter` over the registry's `EvidenceStore`: `record()` only enqueues,
a background thread inserts in batches, retries with backoff and drops the oldest rows while the
database stays unwritable. `stats()` says how the writer is doing, for `/metrics` and `/health`.
Free text (shadow answers, feedback comments) passes the payload redaction hook before it is stored,
in the writer's thread or the feedback route's worker thread, never on the event loop.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Iterable, Sequence

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from registry.evidence_store import EvidenceStore, RequestRecord
from serving.batching import BatchWriter, WriterStats
from serving.payloads import Redactor, redact, redacted

__all__ = ["EvidenceCounters", "EvidenceStats", "EvidenceWriter", "RequestRecord"]

EvidenceStats = WriterStats
"""How the evidence writer is doing."""


class EvidenceWriter(BatchWriter[RequestRecord]):
    """Batched, off-the-hot-path writer of A/B evidence; `record()` only enqueues and never blocks.
    It also remembers which variant answered each recent completion, and with which API key (its
    keyed hash), for feedback."""

    def __init__(
        self,
        store: EvidenceStore,
        flush_interval_s: float = 0.25,
        batch: int = 256,
        max_queue: int = 100_000,
        max_backoff_s: float = 30.0,
        redactor: Redactor = redact,
    ) -> None:
        self.store = store
        self.redactor = redactor
        self._recent: OrderedDict[str, tuple[str, str, str | None]] = OrderedDict()
        super().__init__(
            self._insert,
            "evidence",
            flush_interval_s=flush_interval_s,
            batch=batch,
            max_queue=max_queue,
            max_backoff_s=max_backoff_s,
            on_close=store.close,
        )

    def record(self, row: RequestRecord) -> None:
        with self._lock:
            if not row.shadow:
                self._recent[row.id] = (row.route, row.variant, row.key_hash)
                while len(self._recent) > 100_000:
                    self._recent.popitem(last=False)
            self._enqueue(row)

    def _insert(self, rows: Sequence[RequestRecord]) -> None:
        self.store.insert_requests(
            [
                r if r.output is None else dataclasses.replace(r, output=redacted(self.redactor, r.output))
                for r in rows
            ]
        )

    def lookup(self, completion_id: str) -> tuple[str, str, str | None] | None:
        """(route, variant, key_hash) that answered a completion id, from memory or the database."""
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
        """Store the feedback (replacing any earlier one on the completion), its comment redacted."""
        clean = None if comment is None else redacted(self.redactor, comment)
        self.store.add_feedback(completion_id, route, variant, score, thumbs, clean)


class EvidenceCounters(Collector):
    """Prometheus view of a writer's `stats()`, refreshed by `observe()` before each scrape: the A/B
    evidence writer's (`lora_evidence_*`), or with another `prefix` and `what` the payload logger's
    (`lora_payloads_*`)."""

    def __init__(self, prefix: str = "lora_evidence", what: str = "A/B evidence") -> None:
        self._stats: EvidenceStats | None = None
        self.prefix, self.what = prefix, what

    def observe(self, stats: EvidenceStats | None) -> None:
        self._stats = stats

    def collect(self) -> Iterable[CounterMetricFamily | GaugeMetricFamily]:
        s = self._stats or EvidenceStats(True, 0, 0, 0, 0)
        p, what = self.prefix, self.what
        yield CounterMetricFamily(
            f"{p}_write_failures", f"Failed {what} batch writes (retried)", s.write_failures
        )
        yield CounterMetricFamily(
            f"{p}_dropped", f"{what} rows dropped (queue full or unwritten at shutdown)", s.dropped
        )
        yield GaugeMetricFamily(f"{p}_queued", f"{what} rows waiting to be written", s.queued)
        yield GaugeMetricFamily(
            f"{p}_writing", f"1 while {what} rows are being written, 0 while writes fail", s.writing
        )
