"""Which adapter makes room: the idle version with the fewest recent requests, not merely the
least recently used one (the adapter manager on the PEFT engine and the session registry)."""

from __future__ import annotations

import asyncio

from registry.store import Registry
from tests.serving.fixtures import peft_manager


def test_a_rarely_used_version_is_evicted_before_a_busy_one(adapters, tiny_base) -> None:  # type: ignore[no-untyped-def]
    registry, _ = adapters
    reg = Registry(registry)
    src = reg.get("contact@1")
    busy, rare, newcomer = (
        reg.push(f"evict-{n}", src.path, src.lineage).ref for n in ("busy", "rare", "new")
    )
    manager = peft_manager(reg, tiny_base, max_loaded=2)

    async def ask(model: str) -> None:
        async with manager.lease(model):
            pass

    async def go() -> None:
        await manager.engine.start()
        for model in [busy, busy, busy, rare, newcomer]:  # the newcomer needs a slot
            await ask(model)
        loads = manager.loads
        await ask(busy)  # plain LRU evicted it: it was the least recently used
        assert manager.loads == loads
        assert {v.version.ref for v in manager.loaded.values()} == {busy, newcomer}

    asyncio.run(go())
