"""Load ahead: a version a reference in use moves to is verified and loaded before its first request,
off the event loop (the session's `platform serve`)."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from registry.store import Registry
from tests.serving.fixtures import Server, metric, peft_manager, wait_until

AHEAD = 'lora_adapter_loads_total{trigger="ahead"}'
ON_REQUEST = 'lora_adapter_loads_total{trigger="request"}'
PADDING_MB = 256


def chat(server: Server, model: str) -> Any:
    return server.client().chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=2, temperature=0
    )


def test_a_version_an_alias_in_use_moves_to_is_loaded_before_its_first_request(
    server: Server, adapters
) -> None:  # type: ignore[no-untyped-def]
    registry, _ = adapters
    reg = Registry(registry)
    src = reg.get("contact@1")
    first = reg.push("ahead", src.path, src.lineage)
    reg.set_alias(first.ref, "live")
    assert chat(server, "ahead:live").model == first.ref  # the alias is in use
    loaded_ahead = metric(server.url, AHEAD)

    second = reg.push("ahead", src.path, src.lineage)
    reg.set_alias(second.ref, "live")
    # the load ahead runs beside the other tests on a shared 2-core CI machine: a bound, not a sleep
    wait_until(lambda: metric(server.url, AHEAD) > loaded_ahead, 60)
    loaded_at = metric(server.url, 'lora_adapter_last_load_timestamp_seconds{trigger="ahead"}')
    on_request = metric(server.url, ON_REQUEST)
    sent = time.time()
    assert chat(server, "ahead:live").model == second.ref
    assert loaded_at < sent  # loaded before the request was sent
    assert metric(server.url, ON_REQUEST) == on_request  # and the request loaded nothing


def test_verifying_a_large_version_ahead_does_not_block_the_event_loop(
    server: Server, adapters, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    registry, _ = adapters
    reg = Registry(registry)
    src = reg.get("contact@1")
    reg.push("bigahead", src.path, src.lineage)
    chat(server, "bigahead")  # the name is in use
    padding = tmp_path / "padding.dat"
    with padding.open("wb") as fh:  # every file of a version is hashed before it loads
        for _ in range(PADDING_MB):
            fh.write(bytes(range(256)) * 4096)
    loaded_ahead = metric(server.url, AHEAD)
    load_s = metric(server.url, 'lora_adapter_load_seconds_sum{trigger="ahead"}')

    big = reg.push("bigahead", src.path, src.lineage, extra_files={"padding.dat": padding})
    health_ms: list[float] = []
    deadline = time.monotonic() + 120  # a bound for a slow shared CI machine, not a wait
    with httpx.Client(base_url=server.url, timeout=10) as client:
        while metric(server.url, AHEAD) == loaded_ahead:  # a /metrics scrape: most of a round
            assert time.monotonic() < deadline, "the new version was not loaded ahead"
            for _ in range(5):  # so /health is asked often while the version is verified
                t = time.perf_counter()
                client.get("/health").raise_for_status()
                health_ms.append((time.perf_counter() - t) * 1000)
    took_s = metric(server.url, 'lora_adapter_load_seconds_sum{trigger="ahead"}') - load_s
    health_ms.sort()
    print(
        f"\n{PADDING_MB} MiB verified and loaded ahead in {took_s * 1000:.0f} ms; /health p50 "
        f"{health_ms[len(health_ms) // 2]:.1f} ms, max {health_ms[-1]:.1f} ms over {len(health_ms)} polls"
    )
    assert took_s > 0.1  # verification took clearly longer than the 50 ms bound below
    assert len(health_ms) >= 5
    assert health_ms[-1] < 50
    assert chat(server, "bigahead").model == big.ref
    reg.remove(big.ref, force=True)


def test_an_alias_moved_while_loading_ahead_resolves_is_still_loaded_ahead(
    adapters, tiny_base, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """A push, then an alias move landing while the push's load-ahead run is reading the catalog
    (CI saw it: the move's run found nothing to do and the new version waited for a request)."""
    registry, _ = adapters
    other = Registry(registry)  # another machine: pushes and moves the alias
    src = other.get("contact@1")
    first = other.push("racing", src.path, src.lineage)
    other.set_alias(first.ref, "live")
    second = other.push("racing", src.path, src.lineage)
    reg = Registry(registry)
    manager = peft_manager(reg, tiny_base)
    resolving, moved = threading.Event(), threading.Event()
    resolve_all = manager._resolve_all

    def held_resolve(refs: list[str]) -> dict[str, tuple[str, int]]:
        found = resolve_all(refs)
        if "racing:live" in refs and not resolving.is_set():  # the first run: wait for the move
            resolving.set()
            assert moved.wait(30)
        return found

    async def go() -> None:
        await manager.engine.start()
        async with manager.lease("racing:live") as target:  # in use: the alias names version 2's
            assert target.adapter is not None and target.adapter.name == first.ref  # predecessor
        manager.note_changes(reg.changes())  # the push of version 2
        monkeypatch.setattr(manager, "_resolve_all", held_resolve)
        first_run = asyncio.create_task(manager.load_ahead())
        assert await asyncio.to_thread(resolving.wait, 30)
        other.set_alias(second.ref, "live")  # lands while the first run reads the catalog
        manager.note_changes(reg.changes())
        second_run = asyncio.create_task(manager.load_ahead())
        moved.set()
        await asyncio.gather(first_run, second_run)

    asyncio.run(go())
    assert ("racing", second.version) in manager.loaded


def test_a_name_whose_first_load_spans_a_registry_change_is_still_loaded_ahead(
    adapters, tiny_base, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """A request resolves a new name and loads its version; the server's poll notes the registry's
    change (that very push) while the load is still running. The name is in use all the same: its
    next version is loaded ahead (CI saw a slow first load lose it: the next push waited for a request)."""
    registry, _ = adapters
    other = Registry(registry)  # another machine pushes
    src = other.get("contact@1")
    first = other.push("slowfirst", src.path, src.lineage)
    reg = Registry(registry)
    manager = peft_manager(reg, tiny_base)
    fetching, noted = threading.Event(), threading.Event()
    fetch = manager._fetch

    def held_fetch(name: str, version: int):  # type: ignore[no-untyped-def]
        fetching.set()
        assert noted.wait(30)
        return fetch(name, version)

    async def go() -> None:
        await manager.engine.start()
        monkeypatch.setattr(manager, "_fetch", held_fetch)

        async def request() -> None:
            async with manager.lease("slowfirst") as target:
                assert target.adapter is not None and target.adapter.name == first.ref

        req = asyncio.create_task(request())
        assert await asyncio.to_thread(fetching.wait, 30)
        manager.note_changes(reg.changes())  # the poll sees the push of version 1 mid-load
        run = asyncio.create_task(manager.load_ahead())
        noted.set()
        await asyncio.gather(req, run)
        monkeypatch.setattr(manager, "_fetch", fetch)
        second = other.push("slowfirst", src.path, src.lineage)
        manager.note_changes(reg.changes())
        await manager.load_ahead()
        assert ("slowfirst", second.version) in manager.loaded

    asyncio.run(go())
