"""The server's evidence writer: one row per routed request, written off the request path.

A `serving.batching.BatchWriter` over the registry's `EvidenceStore`: `record()` only enqueues,
a background thread inserts in batches, retries with backoff and drops the oldest rows while the
database stays unwritable. `stats()` says how the writer is doing, for `/metrics` and `/health`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from registry.evidence_store import EvidenceStore, RequestRecord
from serving.batching import BatchWriter, WriterStats

__all__ = ["EvidenceCounters", "EvidenceStats", "EvidenceWriter", "RequestRecord"]

EvidenceStats = WriterStats
"""How the evidence writer is doing."""


class EvidenceWriter(BatchWriter[RequestRecord]):
    """Batched, off-the-hot-path writer of A/B evidence; `record()` only enqueues and never blocks.
    It also remembers which variant answered each recent completion, for feedback."""

    def __init__(
        self,
        store: EvidenceStore,
        flush_interval_s: float = 0.25,
        batch: int = 256,
        max_queue: int = 100_000,
        max_backoff_s: float = 30.0,
    ) -> None:
        self.store = store
        self._recent: OrderedDict[str, tuple[str, str]] = OrderedDict()
        super().__init__(
            store.insert_requests,
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
                self._recent[row.id] = (row.route, row.variant)
                while len(self._recent) > 100_000:
                    self._recent.popitem(last=False)
            self._enqueue(row)

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
