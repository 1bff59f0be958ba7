"""A batching writer thread: rows are enqueued on the request path and written off it.

`record()` puts a row on a bounded in-memory queue and a background thread hands them in batches
to `write`, so the request path never waits on the database. A batch that fails (database
locked, read-only, disk full, file gone) goes back to the head of the queue and is retried with
exponential backoff; while writes keep failing the queue keeps the newest `max_queue` rows and
counts the older ones it drops. `stats()` says how the writer is doing, for `/metrics` and
`/health`. The A/B evidence writer and the payload logger are both one of these.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from registry.errors import StorageError

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class WriterStats:
    """How a writer is doing."""

    writing: bool
    """False while the last batch failed (or the thread is gone): rows are not being written."""
    written: int
    queued: int
    write_failures: int
    """Failed batch writes (each is retried)."""
    dropped: int
    """Rows dropped, oldest first, because the queue was full (or still unwritten at shutdown)."""


class BatchWriter(Generic[T]):
    """Batched, off-the-hot-path writer; `record()` only enqueues and never blocks."""

    def __init__(
        self,
        write: Callable[[Sequence[T]], None],
        what: str,
        flush_interval_s: float = 0.25,
        batch: int = 256,
        max_queue: int = 100_000,
        max_backoff_s: float = 30.0,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self._write_batch = write
        self.what = what
        """What the rows are, for log lines ("evidence", "payloads")."""
        self.flush_interval_s = flush_interval_s
        self.batch = batch
        self.max_queue = max_queue
        self.max_backoff_s = max_backoff_s
        self._on_close = on_close
        self._queue: deque[T] = deque()
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._closing = False
        self._failing = False
        self._written = self._failures = self._dropped = 0
        self._thread = threading.Thread(target=self._run, name=f"{what}-writer", daemon=True)
        self._thread.start()

    def record(self, row: T) -> None:
        with self._lock:
            self._enqueue(row)

    def _enqueue(self, row: T) -> None:
        """Queue a row and wake the thread (caller holds the lock)."""
        self._queue.append(row)
        self._trim()
        self._wake.notify()

    def _trim(self) -> None:
        """Drop the oldest rows beyond `max_queue` (caller holds the lock)."""
        while len(self._queue) > self.max_queue:
            self._queue.popleft()
            self._dropped += 1

    def stats(self) -> WriterStats:
        with self._lock:
            return WriterStats(
                writing=not self._failing and self._thread.is_alive(),
                written=self._written,
                queued=len(self._queue),
                write_failures=self._failures,
                dropped=self._dropped,
            )

    def _take(self) -> tuple[list[T], bool]:
        """Wait for rows (or the flush interval), then take up to one batch; True once closing."""
        with self._lock:
            if not self._queue and not self._closing:
                self._wake.wait(self.flush_interval_s)
            n = min(self.batch, len(self._queue))
            return [self._queue.popleft() for _ in range(n)], self._closing

    def _put_back(self, rows: list[T]) -> None:
        with self._lock:
            self._queue.extendleft(reversed(rows))
            self._trim()

    def _write(self, rows: list[T]) -> bool:
        try:
            self._write_batch(rows)
        except Exception as exc:  # the thread must outlive any failure; StorageError is the usual one
            with self._lock:
                self._failures += 1
                self._failing = True
            level = logging.WARNING if isinstance(exc, StorageError) else logging.ERROR
            log.log(
                level, "%s: writing %d rows failed (%s); will retry", self.what, len(rows), exc, exc_info=True
            )
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
        if self._on_close is not None:
            self._on_close()

    def close(self) -> None:
        """Write what is queued (one attempt if writes are failing), then stop the thread."""
        with self._lock:
            self._closing = True
            self._wake.notify()
        self._thread.join(timeout=10)
