"""Feedback that cannot be spoofed and what the server keeps of who asked (issue #31, items 6, 11
and 13's payload writer), through a real `platform serve` with API keys, an A/B route and payload
logging on that route.

- one feedback per completion (a later one replaces the earlier), and `ab report` counts
  completions, not posts; a score outside 0..1 is a 400;
- feedback is accepted only with the API key that made the request;
- user ids and API keys are kept as HMACs with the server's secret, never bare sha256;
- feedback comments are redacted, and a prompt given as token ids is stored decoded and redacted;
- the evidence's free text follows the payload retention;
- the payload writer shows in /health and /metrics beside the evidence writer."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from cli.main import cli
from registry.evidence_store import RequestRecord
from registry.routes import start_route
from registry.store import Registry
from tests.serving.fixtures import Server, copy_versions, metric, running_server, wait_until

pytestmark = pytest.mark.slow

KEY = "inference-key-0123456789"
ADMIN = "admin-key-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {KEY}"}
ADMIN_AUTH = {"Authorization": f"Bearer {ADMIN}"}


@pytest.fixture(scope="module")
def keyed(adapters, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:  # type: ignore[no-untyped-def]
    """A server with API keys, the A/B route `fbroute` (logged with --log-payloads) and a 0.5 s upkeep."""
    root = tmp_path_factory.mktemp("feedback")
    reg = Registry(root / "registry")
    copy_versions(Registry(adapters[0]), reg, ["support@1", "contact@1"])
    a, b = reg.get("support@1"), reg.get("contact@1")
    v1, v2 = reg.push("fbroute", a.path, a.lineage).ref, reg.push("fbroute", b.path, b.lineage).ref
    start_route(reg, "fbroute", [(v1, 50), (v2, 50)])
    env = {**os.environ, "LORA_PLATFORM_PAYLOAD_PURGE_INTERVAL_S": "0.5"}
    flags = ["--engine", "peft", "--dtype", "float32", "--max-lora-rank", "16"]
    flags += ["--api-key", KEY, "--admin-key", ADMIN, "--log-payloads", "fbroute"]
    flags += ["--payload-retention-days", "1"]
    yield from running_server(root / "registry", root, *flags, env=env)


def _ask(server: Server, user: str, headers: dict[str, str] = AUTH) -> str:
    body = {
        "model": "fbroute",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 2,
        "user": user,
    }
    r = httpx.post(server.url + "/v1/chat/completions", json=body, headers=headers, timeout=60)
    assert r.status_code == 200, r.text
    return str(r.json()["id"])


def _feedback(server: Server, body: dict[str, object], headers: dict[str, str] = AUTH) -> httpx.Response:
    return httpx.post(server.url + "/v1/feedback", json=body, headers=headers, timeout=30)


def _evidence(server: Server) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    return Registry(server.registry).evidence().load("fbroute")


def _request_row(server: Server, cid: str) -> dict[str, object]:
    wait_until(lambda: any(r["id"] == cid for r in _evidence(server)[0]), 10)
    return next(r for r in _evidence(server)[0] if r["id"] == cid)


def test_one_client_cannot_multiply_its_feedback(keyed: Server) -> None:
    ids = [_ask(keyed, f"user-{i}") for i in range(3)]
    for cid in ids:
        _request_row(keyed, cid)  # feedback is found in memory or in the database either way
    for _ in range(50):
        assert _feedback(keyed, {"id": ids[0], "thumbs": "down"}).status_code == 200
    assert _feedback(keyed, {"id": ids[0], "thumbs": "up", "comment": "changed my mind"}).status_code == 200
    assert _feedback(keyed, {"id": ids[1], "score": 0.25}).status_code == 200

    _, fb = _evidence(keyed)
    assert sorted(str(f["completion_id"]) for f in fb) == sorted(ids[:2])  # one row per completion
    latest = next(f for f in fb if f["completion_id"] == ids[0])
    assert latest["thumbs"] == 1 and latest["comment"] == "changed my mind"  # the later one replaced them

    out = CliRunner().invoke(cli, ["ab", "report", "fbroute", "--json", "--registry", str(keyed.registry)])
    assert out.exit_code == 0, out.output
    variants = json.loads(out.output)["variants"]
    assert sum(v["feedback"] for v in variants.values()) == 2  # distinct completions, not 52 posts
    logged = Registry(keyed.registry).payloads().completions("fbroute")
    assert next(c for c in logged if c.record.id == ids[0]).thumbs == 1


@pytest.mark.parametrize("score", [-0.1, 1.5, 500.0, 1e300])
def test_a_score_outside_zero_to_one_is_a_400(keyed: Server, score: float) -> None:
    cid = _ask(keyed, "scorer")
    r = _feedback(keyed, {"id": cid, "score": score})
    assert r.status_code == 400 and r.json()["error"]["param"] == "score"


def test_feedback_needs_the_key_that_made_the_request(keyed: Server) -> None:
    cid = _ask(keyed, "owner")
    other = _feedback(
        keyed, {"id": cid, "thumbs": "down"}, headers=ADMIN_AUTH
    )  # a valid key, not the asker's
    assert other.status_code == 403
    assert set(other.json()["error"]) == {"message", "type", "param", "code"}
    assert KEY not in other.text and ADMIN not in other.text
    assert _feedback(keyed, {"id": cid, "thumbs": "down"}, headers={}).status_code == 401
    assert _feedback(keyed, {"id": cid, "thumbs": "up"}).status_code == 200
    assert not any(f["completion_id"] == cid and f["thumbs"] == 0 for f in _evidence(keyed)[1])


def test_user_ids_and_keys_are_kept_as_hmacs_with_the_server_secret(keyed: Server) -> None:
    cid = _ask(keyed, "alice@example.com")
    row = _request_row(keyed, cid)
    secret_file = Path(keyed.registry) / "server_secret"
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    secret = secret_file.read_bytes().strip()
    assert row["user_hash"] != hashlib.sha256(b"alice@example.com").hexdigest()[:16]  # not a bare sha256
    assert row["user_hash"] == hmac.new(secret, b"user\0alice@example.com", hashlib.sha256).hexdigest()[:16]
    assert row["key_hash"] == hmac.new(secret, f"api-key\0{KEY}".encode(), hashlib.sha256).hexdigest()
    assert KEY not in json.dumps(row)


def test_feedback_comments_are_redacted(keyed: Server) -> None:
    cid = _ask(keyed, "commenter")
    comment = "wrong, mail me at jane.doe@example.com or call 555 123 4567"
    assert _feedback(keyed, {"id": cid, "thumbs": "down", "comment": comment}).status_code == 200
    stored = next(f for f in _evidence(keyed)[1] if f["completion_id"] == cid)
    assert stored["comment"] == "wrong, mail me at [EMAIL] or call [NUMBER]"


def test_a_prompt_given_as_token_ids_is_stored_decoded_and_redacted(keyed: Server, tiny_base) -> None:  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(tiny_base.path)("my card is 4111 1111 1111 1111")["input_ids"]
    body = {"model": "fbroute", "prompt": ids, "max_tokens": 2}
    r = httpx.post(keyed.url + "/v1/completions", json=body, headers=AUTH, timeout=60)
    assert r.status_code == 200, r.text
    store = Registry(keyed.registry).payloads()

    def logged_prompt() -> object:
        found = [c for c in store.completions("fbroute") if c.record.id == r.json()["id"]]
        return json.loads(found[0].record.request)["prompt"] if found else None

    wait_until(lambda: logged_prompt() is not None, 10)
    prompt = logged_prompt()
    assert isinstance(prompt, str) and "[NUMBER]" in prompt and "4111" not in prompt


def test_shadow_answers_and_feedback_comments_follow_the_payload_retention(keyed: Server) -> None:
    evidence = Registry(keyed.registry).evidence()
    old, new = time.time() - 3 * 86400, time.time()
    rows = [
        RequestRecord(
            "chatcmpl-old", old, "fbroute", "fbroute@1", None, 0.1, 0.01, 1, 1, "ok", 1, "old answer"
        ),
        RequestRecord(
            "chatcmpl-new", new, "fbroute", "fbroute@1", None, 0.1, 0.01, 1, 1, "ok", 1, "new answer"
        ),
    ]
    evidence.insert_requests(rows)
    evidence.add_feedback("chatcmpl-oldfb", "fbroute", "fbroute@1", None, 1, "an old comment")

    def kept(cid: str, field: str) -> object:
        reqs, fb = evidence.load("fbroute")
        return next(r[field] for r in [*reqs, *fb] if r.get("id", r.get("completion_id")) == cid)

    from registry import db as t

    with evidence.db.write(bump=False) as conn:  # the feedback is as old as the request
        conn.execute(t.feedback.update().where(t.feedback.c.completion_id == "chatcmpl-oldfb").values(ts=old))
    wait_until(
        lambda: kept("chatcmpl-old", "output") is None and kept("chatcmpl-oldfb", "comment") is None, 10
    )
    assert kept("chatcmpl-new", "output") == "new answer"  # within retention: kept
    assert kept("chatcmpl-oldfb", "thumbs") == 1  # the numbers stay for the report


def test_the_payload_writer_shows_in_health_and_metrics(keyed: Server) -> None:
    body = httpx.get(keyed.url + "/health", timeout=10).json()
    assert set(body["payloads"]) >= {"writing", "written", "queued", "write_failures", "dropped"}
    assert body["payloads"]["dropped"] == 0 and body["payloads"]["writing"] is True
    for name in ("lora_payloads_dropped", "lora_payloads_write_failures", "lora_payloads_queued"):
        assert f"\n{name}" in "\n" + httpx.get(keyed.url + "/metrics", timeout=10).text, name
    assert metric(keyed.url, "lora_payloads_writing") == 1
