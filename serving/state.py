"""What a running server holds: settings, base model, engine, adapters, metrics, admission."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from registry.basemodels import BaseModel
from registry.routes import Route, list_routes
from registry.store import Registry
from serving.adapters import AdapterManager
from serving.engine.base import Engine
from serving.errors import OverloadedError, ServiceUnavailableError
from serving.experiments.evidence import EvidenceWriter
from serving.identity import KeyHasher, server_secret
from serving.metrics import Metrics
from serving.payloads import PayloadLogger
from serving.settings import ServeSettings

log = logging.getLogger("lora_platform.serving")


@dataclass
class ServerState:
    settings: ServeSettings
    base: BaseModel
    registry: Registry
    engine: Engine
    adapters: AdapterManager
    evidence: EvidenceWriter | None = None
    payloads: PayloadLogger | None = None
    """Payload logging (`--log-payloads`); None when off."""
    routes: dict[str, Route] = field(default_factory=dict)
    metrics: Metrics = field(default_factory=Metrics)
    admitted: int = 0
    ready: bool = False
    draining: bool = False
    drain_expired: bool = False
    engine_dead: bool = False
    catalog_down: bool = False
    """True while the catalog database cannot be reached: resolved references and loaded
    versions keep serving, new resolutions answer 503."""
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    hasher: KeyHasher = field(init=False)
    """Keyed hashes of user ids and API keys (`--hash-secret`, else the registry's secret)."""

    def __post_init__(self) -> None:
        secret = server_secret(self.settings.hash_secret, self.registry.root)
        self.hasher = KeyHasher(secret, authenticated=self.settings.api_key is not None)

    @property
    def served_base(self) -> str:
        return self.adapters.served_base

    async def refresh(self) -> bool:
        """Pick up registry changes: new versions, alias moves, A/B route changes; True when
        the registry changed since the last call. The database is read off the event loop."""
        changes = await asyncio.to_thread(self.registry.changes)
        if not self.adapters.note_changes(changes):
            return False
        routes = await asyncio.to_thread(list_routes, self.registry)
        self.routes = {r.name: r for r in routes}
        variants = [v.ref for r in routes for v in r.variants] + [r.shadow for r in routes if r.shadow]
        # loading ahead runs beside: a request whose miss re-read the catalog does not wait for it
        self.tasks = [t for t in self.tasks if not t.done()]
        self.tasks.append(asyncio.create_task(self._load_ahead(variants)))
        return True

    async def _load_ahead(self, variants: list[str]) -> None:
        try:
            await self.adapters.load_ahead(variants)
        except Exception:  # e.g. the catalog went away mid-way: the next change tries again
            log.exception("loading ahead failed")
        self.metrics.loaded_adapters.set(len(self.adapters.loaded))

    @contextmanager
    def admission(self) -> Iterator[None]:
        """Hold a request slot (or fail fast: 429 when full, 503 when draining) until the block ends."""
        self._admit()
        try:
            yield
        finally:
            self._release()

    @contextmanager
    def spare_slot(self) -> Iterator[bool]:
        """Hold a request slot while the block runs if one is free (True), else nothing (False):
        for optional engine work (shadow copies); no request is refused for want of a slot for it."""
        try:
            self._admit()
        except (OverloadedError, ServiceUnavailableError):
            yield False
            return
        try:
            yield True
        finally:
            self._release()

    def _admit(self) -> None:
        """Take a request slot or fail fast (before tokenization or any other costly work)."""
        if self.draining:
            raise ServiceUnavailableError("the server is shutting down", headers={"Retry-After": "1"})
        if self.admitted >= self.settings.max_queue:
            raise OverloadedError(
                f"server overloaded: {self.admitted} requests in flight (max_queue={self.settings.max_queue})",
                headers={"Retry-After": "1"},
            )
        self.admitted += 1
        self.metrics.in_flight.set(self.admitted)

    def _release(self) -> None:
        self.admitted -= 1
        self.metrics.in_flight.set(self.admitted)
