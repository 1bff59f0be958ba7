"""A/B routes on the running server: live changes, stickiness, evidence, feedback, promote, shadow.

Every test runs on both catalog backends: the session's folder registry (SQLite) and PostgreSQL."""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path

import httpx
import openai
import pytest

from registry.routes import promote, set_weights, start_route
from registry.store import Registry
from tests.serving.fixtures import CatalogServer, wait_until


@pytest.fixture(scope="module")
def ab(catalog_server: CatalogServer) -> tuple[Registry, str, str]:
    reg = catalog_server.registry()
    a = reg.get("contact@1")
    b = reg.get("support@1")
    v1 = reg.push("abtest", a.path, a.lineage)
    v2 = reg.push("abtest", b.path, b.lineage)
    return reg, v1.ref, v2.ref


def ask(client: openai.OpenAI, user: str | None, model: str = "abtest") -> tuple[str, str, str]:
    raw = client.chat.completions.with_raw_response.create(
        model=model,
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=2,
        temperature=0,
        user=user or openai.NOT_GIVEN,
    )
    out = raw.parse()
    return out.model, raw.headers["x-adapter-version"], out.id


def test_a_route_applies_live_and_users_stick(catalog_server: CatalogServer, ab) -> None:  # type: ignore[no-untyped-def]
    server = catalog_server.server
    reg, v1, v2 = ab
    client = server.client()
    assert ask(client, "u0")[0] == v2  # before the route: plain name = latest version
    start_route(reg, "abtest", [(v1, 50), (v2, 50)])
    wait_until(lambda: "abtest" in {m.id for m in client.models.list().data if getattr(m, "variants", None)})
    seen = Counter()
    for i in range(40):
        user = f"user-{i}"
        served = {ask(client, user)[0] for _ in range(2)}
        assert len(served) == 1, user  # sticky
        seen[served.pop()] += 1
    assert seen[v1] > 5 and seen[v2] > 5
    model, header, _ = ask(client, "user-1")
    assert model == header
    r = httpx.post(
        f"{server.url}/v1/chat/completions",
        headers={"X-User-Id": "user-7"},
        json={"model": "abtest", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1},
    )
    assert r.json()["model"] == ask(client, "user-7")[0]  # header or `user` field: same sticky key


def test_weight_changes_apply_within_a_second(catalog_server: CatalogServer, ab) -> None:  # type: ignore[no-untyped-def]
    server = catalog_server.server
    reg, v1, v2 = ab
    client = server.client()
    set_weights(reg, "abtest", [(v1, 0), (v2, 100)])
    wait_until(lambda: all(ask(client, f"w{i}")[0] == v2 for i in range(5)))
    set_weights(reg, "abtest", [(v1, 100), (v2, 0)])
    wait_until(lambda: all(ask(client, f"w{i}")[0] == v1 for i in range(5)))
    set_weights(reg, "abtest", [(v1, 50), (v2, 50)])


def test_evidence_and_feedback_are_attributed_to_the_variant(catalog_server: CatalogServer, ab) -> None:  # type: ignore[no-untyped-def]
    server = catalog_server.server
    reg, _v1, _v2 = ab
    client = server.client()
    model, _, cid = ask(client, "fb-user")
    r = httpx.post(f"{server.url}/v1/feedback", json={"id": cid, "thumbs": "up"})
    assert r.status_code == 200 and r.json()["variant"] == model
    bad = httpx.post(f"{server.url}/v1/feedback", json={"id": "chatcmpl-nope", "score": 1})
    assert bad.status_code == 404 and bad.json()["error"]["param"] == "id"
    assert httpx.post(f"{server.url}/v1/feedback", json={"id": cid}).status_code == 400

    def written() -> bool:  # the writer flushes off the hot path
        reqs, fb = reg.evidence().load("abtest")
        return any(r["id"] == cid for r in reqs) and any(f["completion_id"] == cid for f in fb)

    wait_until(written, 10)
    reqs, fb = reg.evidence().load("abtest")
    row = next(r for r in reqs if r["id"] == cid)
    assert row["variant"] == model and row["user_hash"] not in (None, "fb-user") and row["latency_s"] > 0
    assert row["completion_tokens"] == 2
    assert any(f["completion_id"] == cid and f["thumbs"] == 1 and f["variant"] == model for f in fb)
    metrics = httpx.get(f"{server.url}/metrics").text
    assert f'route="abtest",status="ok",variant="{model}"' in metrics


def test_shadow_copies_are_logged_never_returned(catalog_server: CatalogServer, ab) -> None:  # type: ignore[no-untyped-def]
    server = catalog_server.server
    reg, v1, v2 = ab
    client = server.client()
    set_weights(reg, "abtest", [(v1, 100), (v2, 0)], shadow=v2, shadow_share=1.0)
    wait_until(lambda: ask(client, "s0")[0] == v1)
    ids = [ask(client, f"s{i}")[2] for i in range(3)]

    def shadow_ids() -> set[str]:
        return {r["id"] for r in reg.evidence().load("abtest")[0] if r["shadow"]}

    wait_until(lambda: {f"{cid}-shadow" for cid in ids} <= shadow_ids(), 30)  # shadows run after the reply
    reqs, _ = reg.evidence().load("abtest")
    shadows = {r["id"]: r for r in reqs if r["shadow"]}
    for cid in ids:
        assert shadows[f"{cid}-shadow"]["variant"] == v2 and shadows[f"{cid}-shadow"]["output"] is not None
    set_weights(reg, "abtest", [(v1, 50), (v2, 50)], shadow_share=0.0)


def test_promote_under_load_has_zero_failed_requests(catalog_server: CatalogServer, ab) -> None:  # type: ignore[no-untyped-def]
    server = catalog_server.server
    reg, _v1, v2 = ab
    client = server.client()
    failures: list[BaseException] = []
    served: list[str] = []
    stop = threading.Event()

    def traffic(i: int) -> None:
        n = 0
        while not stop.is_set():
            try:
                served.append(ask(client, f"load-{i}-{n}")[0])
            except BaseException as exc:
                failures.append(exc)
            n += 1

    threads = [threading.Thread(target=traffic, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    wait_until(lambda: len(served) >= 3, 30)  # traffic on the route
    assert promote(reg, "abtest", v2) == "abtest:prod"
    promoted = len(served)
    wait_until(lambda: len(served) >= promoted + 6, 30)  # and through the promotion
    stop.set()
    for t in threads:
        t.join(timeout=60)
    assert not failures and len(served) > 5
    assert reg.get("abtest:prod").ref == v2
    assert ask(client, "anyone", "abtest:prod")[0] == v2
    assert ask(client, "anyone")[0] == v2  # route ended: the plain name is the latest version again


def test_ab_report_cli_over_live_evidence(catalog_server: CatalogServer, ab, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from click.testing import CliRunner

    from cli.main import cli

    out = CliRunner().invoke(
        cli, ["ab", "report", "abtest", *catalog_server.cli_args(), "--png", str(tmp_path / "r.png")]
    )
    assert out.exit_code == 0, out.output
    assert "verdict" in out.output and (tmp_path / "r.png").is_file()
