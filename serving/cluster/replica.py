"""The engine replica deployment: one engine, one AdapterManager, Ray Serve's multiplexed loader."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass

from ray import serve

from registry.basemodels import resolve_base_model
from registry.store import Registry
from serving.adapters import AdapterManager
from serving.app import context_length, make_engine
from serving.cluster import BASE_MODEL_ID
from serving.engine.base import Delta, GenParams
from serving.settings import ServeSettings


def replica_slots(settings: ServeSettings) -> int:
    """Adapter slots per engine replica that Ray's multiplexing manages: `max_cpu_loras` less the
    pinned versions (`settings.pin` holds immutable versions here), which keep theirs."""
    return max(1, settings.max_cpu_loras - len(set(settings.pin)))


@dataclass(frozen=True)
class ReplicaReport:
    """What a replica tells the ingress at the start of every answer (its per-replica figures)."""

    replica: str
    pid: int
    loads: int
    evictions: int
    loaded: tuple[str, ...]


class Slot:
    """One version held by Ray's multiplexed LRU; Ray calls `__del__` when it evicts it."""

    def __init__(self, adapters: AdapterManager, ref: str, loop: asyncio.AbstractEventLoop) -> None:
        self.adapters, self.ref, self.loop = adapters, ref, loop
        self.released = False

    def __del__(self) -> None:  # Ray runs it in a worker thread; the GC may run it again: once only
        if self.released:
            return
        self.released = True
        if not self.loop.is_closed():
            asyncio.run_coroutine_threadsafe(self.adapters.unload(self.ref), self.loop)


class EngineReplica:
    """One engine behind the ingress. `generate` streams a ReplicaReport, then the engine's deltas."""

    # Ray Serve awaits an async constructor (type checkers require __init__ to return None)
    async def __init__(self, settings: ServeSettings) -> None:  # type: ignore[misc]
        base = resolve_base_model(settings.base_model)
        model_len = context_length(base.path)
        effective = settings.model_copy(
            update={"max_model_len": min(settings.max_model_len or model_len, model_len)}
        )
        self.engine = make_engine(effective, base)
        await self.engine.start()
        registry = Registry(settings.registry, settings.artifacts)
        served = settings.served_model_name or base.id
        self.adapters = AdapterManager(
            registry, self.engine, base, served, settings.max_lora_rank, settings.max_cpu_loras
        )
        self.pinned = {(await self.adapters.pin(ref)).ref for ref in settings.pin}
        self.loop = asyncio.get_running_loop()
        self.replica_id = serve.get_replica_context().replica_id.unique_id

        async def load(model_id: str) -> Slot:
            await self.adapters.pin(model_id)
            return Slot(self.adapters, model_id, self.loop)

        self.load = serve.multiplexed(max_num_models_per_replica=replica_slots(settings))(load)

    def report(self) -> ReplicaReport:
        loaded = tuple(sorted(v.handle.name for v in self.adapters.loaded.values()))
        return ReplicaReport(
            self.replica_id, os.getpid(), self.adapters.loads, self.adapters.evictions, loaded
        )

    async def stats(self) -> ReplicaReport:
        return self.report()

    async def generate(
        self, request_id: str, model_id: str, prompt_ids: list[int], params: GenParams
    ) -> AsyncIterator[tuple[ReplicaReport, list[Delta]] | list[Delta]]:
        """Load the version if this replica does not hold it, then stream the engine's deltas, the
        first batch with this replica's report (one streamed item fewer per request).
        Cancelling the call (the client went away) closes the engine's stream: it aborts."""
        if model_id == BASE_MODEL_ID:
            async for item in self.with_report(self.engine.generate(request_id, prompt_ids, params, None)):
                yield item
            return
        if model_id not in self.pinned:  # a pinned version is never in Ray's LRU, never evicted
            await self.load(model_id)
        async with self.adapters.lease(model_id) as target:
            stream = self.engine.generate(request_id, prompt_ids, params, target.adapter)
            try:
                async for item in self.with_report(stream):
                    yield item
            finally:
                await stream.aclose()

    async def with_report(
        self, stream: AsyncIterator[list[Delta]]
    ) -> AsyncIterator[tuple[ReplicaReport, list[Delta]] | list[Delta]]:
        first = True
        async for deltas in stream:
            yield (self.report(), deltas) if first else deltas
            first = False
        if first:
            yield (self.report(), [])

    async def check_health(self) -> None:
        """Ray Serve's health check: raises (EngineDeadError) when the engine is dead, and Ray
        replaces the replica."""
        await self.engine.check_health()
