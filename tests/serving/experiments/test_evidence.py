"""The evidence writer survives an unwritable database, bounds its queue, and catches up afterwards."""

from __future__ import annotations

import shutil
import sqlite3
import time
from pathlib import Path

from registry.db import CatalogDB
from registry.evidence_store import EvidenceStore, RequestRecord
from serving.experiments.evidence import EvidenceCounters, EvidenceWriter
from tests.serving.fixtures import wait_until


def _rec(i: int) -> RequestRecord:
    return RequestRecord(f"r{i}", time.time(), "support", "support@1", None, 0.1, 0.01, 3, 2, "ok")


def _ids(store: EvidenceStore) -> set[str]:
    return {r["id"] for r in store.load("support")[0]}


def test_a_locked_database_is_retried_oldest_rows_dropped_and_newest_written_after(tmp_path: Path) -> None:
    store = EvidenceStore(CatalogDB.for_folder(tmp_path, timeout_s=0.05))
    holder = sqlite3.connect(tmp_path / "catalog.sqlite", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another process holding the write lock: every insert fails
    writer = EvidenceWriter(store, flush_interval_s=0.02, max_queue=50, max_backoff_s=0.1)
    try:
        for i in range(200):
            writer.record(_rec(i))
        wait_until(lambda: writer.stats().write_failures >= 2, 10)  # failed, retried, failed again
        wait_until(lambda: writer.stats().dropped == 150, 10)
        stats = writer.stats()
        assert not stats.writing and stats.queued <= 50 and stats.written == 0
        holder.execute("ROLLBACK")
        holder.close()
        wait_until(lambda: _ids(store) == {f"r{i}" for i in range(150, 200)}, 10)
        wait_until(lambda: writer.stats().writing, 5)
        writer.record(_rec(200))
        wait_until(lambda: "r200" in _ids(store), 5)
        after = writer.stats()
        assert after.write_failures >= 2 and after.dropped == 150 and after.written == 51
    finally:
        writer.close()


def test_a_database_path_that_is_a_folder_fails_until_it_is_a_file_again(tmp_path: Path) -> None:
    db = CatalogDB.for_folder(tmp_path, timeout_s=0.05)
    db.dispose()
    path = tmp_path / "catalog.sqlite"
    path.rename(tmp_path / "catalog.sqlite.aside")
    path.mkdir()  # what an operator's mistake or a broken volume leaves: SQLite cannot open it
    writer = EvidenceWriter(EvidenceStore(db), flush_interval_s=0.02, max_backoff_s=0.1)
    counters = EvidenceCounters()
    try:
        for i in range(5):
            writer.record(_rec(i))
        wait_until(lambda: writer.stats().write_failures > 0, 10)
        counters.observe(writer.stats())
        exported = {m.name: m.samples[0].value for m in counters.collect()}
        assert exported["lora_evidence_write_failures"] >= 1 and exported["lora_evidence_writing"] == 0
        shutil.rmtree(path)
        (tmp_path / "catalog.sqlite.aside").rename(path)
        wait_until(lambda: _ids(EvidenceStore(db)) == {f"r{i}" for i in range(5)}, 10)
        assert writer.stats().writing and writer.stats().dropped == 0
    finally:
        writer.close()


def test_rows_that_cannot_be_written_at_shutdown_are_counted_as_dropped(tmp_path: Path) -> None:
    store = EvidenceStore(CatalogDB.for_folder(tmp_path, timeout_s=0.05))
    holder = sqlite3.connect(tmp_path / "catalog.sqlite", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    writer = EvidenceWriter(store, flush_interval_s=0.02, max_backoff_s=0.1)
    for i in range(10):
        writer.record(_rec(i))
    wait_until(lambda: writer.stats().write_failures > 0, 10)
    started = time.monotonic()
    writer.close()
    assert time.monotonic() - started < 5 and writer.stats().dropped == 10
    holder.close()
