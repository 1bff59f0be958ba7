"""Feedback rows: one per completion (issue #31, item 6), whatever is already in the database, and
the server secret the keyed hashes use (item 11). A real SQLite catalog in tmp_path."""

from __future__ import annotations

import stat
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from registry import db as t
from registry.store import Registry
from serving.experiments.gates import Sample
from serving.identity import SECRET_FILE, KeyHasher, server_secret


def test_a_later_feedback_replaces_the_earlier(tmp_path: Path) -> None:
    evidence = Registry(tmp_path / "registry").evidence()
    for thumbs in (0, 0, 0, 1):
        evidence.add_feedback("c1", "r", "r@1", None, thumbs, None)
    evidence.add_feedback("c2", "r", "r@1", 0.5, None, "ok")
    _, fb = evidence.load("r")
    assert [(f["completion_id"], f["thumbs"], f["score"]) for f in fb] == [("c1", 1, None), ("c2", None, 0.5)]


def test_rows_written_before_the_rule_count_once_per_completion(tmp_path: Path) -> None:
    """Databases already hold many rows per completion (and replicas may race): what the report
    and the rollout gates read is the latest per completion."""
    evidence = Registry(tmp_path / "registry").evidence()
    now = time.time()
    rows = [
        {"completion_id": "spammed", "ts": now + i, "route": "r", "variant": "r@1", "thumbs": 0}
        for i in range(500)
    ]
    rows.append({"completion_id": "spammed", "ts": now + 600, "route": "r", "variant": "r@1", "thumbs": 1})
    rows.append({"completion_id": "other", "ts": now, "route": "r", "variant": "r@1", "thumbs": 0})
    with evidence.db.write(bump=False) as conn:
        conn.execute(t.feedback.insert(), rows)
    _, fb = evidence.load("r")
    assert len(fb) == 2
    assert Sample.of([], fb).thumbs == [0, 1]  # the gates' sample: two completions, the latest of each


def test_payload_feedback_is_replaced_too(tmp_path: Path) -> None:
    payloads = Registry(tmp_path / "registry").payloads()
    payloads.add_feedback("c1", 0.1, 0, "first")
    payloads.add_feedback("c1", None, 1, None)
    with payloads.db.read() as conn:
        rows = conn.execute(t.payload_feedback.select()).fetchall()
    assert [(r.completion_id, r.thumbs, r.score) for r in rows] == [("c1", 1, None)]


def test_the_server_secret_is_kept_private_and_shared_by_processes_that_start_together(
    tmp_path: Path,
) -> None:
    with ThreadPoolExecutor(8) as pool:
        secrets = set(pool.map(lambda _: server_secret(None, tmp_path), range(16)))
    assert len(secrets) == 1 and len(secrets.pop()) == 64
    assert stat.S_IMODE((tmp_path / SECRET_FILE).stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == [SECRET_FILE]  # no temporary file left
    assert server_secret("given", tmp_path) == b"given"


def test_keyed_hashes_depend_on_the_secret(tmp_path: Path) -> None:
    a, b = KeyHasher(b"one"), KeyHasher(b"two")
    assert a.user("alice") != b.user("alice") and a.user(None) is None
    key = a.api_key("sk-123")
    assert a.same_key(key, "sk-123") and not a.same_key(key, "sk-124") and not a.same_key(key, None)
    assert not b.same_key(key, "sk-123") and a.same_key(None, None)
    open_server = KeyHasher(b"one", authenticated=False)  # no --api-key: a bearer proves nothing
    assert open_server.api_key("sk-123") is None and open_server.same_key(key, None)


def test_text_with_a_nul_character_is_stored_on_both_backends(registry_location: str) -> None:
    """PostgreSQL text cannot hold NUL: a shadow answer or a comment with one must not jam the writer."""
    from registry.evidence_store import RequestRecord
    from registry.payloads import PayloadRecord

    reg = Registry(registry_location)
    reg.evidence().insert_requests(
        [RequestRecord("r1", 1.0, "bot", "bot@1", None, 0.1, 0.05, 3, 2, "ok", 1, output="a\x00b")]
    )
    reg.evidence().add_feedback("r1", "bot", "bot@1", None, 1, "bad\x00comment")
    payload = PayloadRecord(
        "p1", 1.0, "bot", "bot@1", '{"prompt": "x"}', "y\x00z", "stop", "ok", 0.1, 0.05, 1, 1
    )
    reg.payloads().insert([payload])
    reg.payloads().add_feedback("p1", None, 1, "c\x00d")
    [logged] = reg.payloads().completions("bot")
    assert logged.record.completion == "y\ufffdz" and logged.thumbs == 1
