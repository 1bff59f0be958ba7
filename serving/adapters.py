"""Adapters: resolve a request's `model` to one immutable version, validate, load, evict.

Load ahead: when the registry changes, a reference in use (one requests resolved whose version is
loaded) that now names another version, and every new A/B or rollout variant, is verified and
loaded before its first request. Verification, validation, resolution and listing run in worker
threads, never on the event loop: catalog reads in a small pool of their own, so that a catalog
that hangs (a connect waits for its timeout) holds neither the loop nor the threads that
tokenize prompts; after a failed read, names not resolved before fail fast for `CATALOG_RETRY_S`.

Nothing unchecked reaches the engine: a bad LoRA path passed to vLLM's `generate()` kills the
whole engine, so every version is verified (sha256 manifest), validated (safetensors, rank,
target modules present in this base model, same base weights) and loaded with `add_adapter`
before a request may use it. Each version gets its own integer LoRA id, never reused.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from registry.adapter import check_adapter, weight_shapes
from registry.basemodels import BaseModel
from registry.errors import (
    IntegrityError,
    InvalidAdapterError,
    InvalidReferenceError,
    NotFoundError,
    StorageError,
)
from registry.refs import parse_ref
from registry.store import Registry, Version
from serving import tracing
from serving.engine.base import AdapterHandle, Engine
from serving.errors import AdapterLoadError, ModelNotFoundError, ServingError
from serving.metrics import Metrics

log = logging.getLogger("lora_platform.serving")

UNSUPPORTED_TARGETS = {"embed_tokens", "lm_head"}
BASE_ALIASES = {"base"}
Key = tuple[str, int]
T = TypeVar("T")

MAX_RESOLVED = 4096
"""Resolutions kept (least recently used dropped first). Keys are canonical references
(`parse_ref`), so spellings of one name (whitespace, `@03`) share an entry."""
CATALOG_THREADS = 4
"""Worker threads for catalog reads on the request path (resolution, `/v1/models`)."""
CATALOG_RETRY_S = 1.0
"""After a catalog read failed (database unreachable), how long names not resolved before are
answered 503 at once instead of waiting for another connect timeout each."""


@dataclass
class Loaded:
    handle: AdapterHandle
    version: Version
    in_use: int = 0
    last_used: float = field(default_factory=time.monotonic)
    pinned: bool = False


class Popularity:
    """Recent request counts per version, for eviction: the version evicted is the idle one with
    the fewest recent requests (then the least recently used), so one request for a rarely used
    version does not push out a version asked for every second, as plain LRU does (with power-law
    popularity, about a quarter fewer loads). Counts halve every `window` requests (TinyLFU's
    reset), so a version that stops being asked for loses its place within a few windows."""

    def __init__(self, window: int) -> None:
        self.window = window
        self.counts: dict[Key, float] = {}
        self._since_halving = 0

    def __getitem__(self, key: Key) -> float:
        return self.counts.get(key, 0.0)

    def hit(self, key: Key, n: float = 1.0) -> None:
        self.counts[key] = self[key] + n
        self._since_halving += 1
        if self._since_halving >= self.window:
            self._since_halving = 0
            self.counts = {k: c / 2 for k, c in self.counts.items() if c >= 0.5}


@dataclass(frozen=True)
class Target:
    """What a request's `model` resolved to: the base model (adapter None) or one version."""

    served_name: str
    adapter: AdapterHandle | None


class AdapterManager:
    """Owns the engine's adapter slots: resolution cache, loading, pinning and eviction."""

    def __init__(
        self,
        registry: Registry,
        engine: Engine,
        base: BaseModel,
        served_base: str,
        max_lora_rank: int,
        max_loaded: int,
        metrics: Metrics | None = None,
    ) -> None:
        self.registry = registry
        self.engine = engine
        self.base = base
        self.served_base = served_base
        self.max_lora_rank = max_lora_rank
        self.max_loaded = max_loaded
        self.metrics = metrics
        self.loaded: dict[tuple[str, int], Loaded] = {}
        self._next_id = 1
        self._locks: dict[tuple[str, int], asyncio.Lock] = {}
        self._loading: set[Key] = set()
        """Versions being loaded now (for a request or ahead)."""
        self._adding = 0
        """Versions between `_make_room` and their entry in `loaded`: they hold a slot already."""
        self._resolved: OrderedDict[str, Key] = OrderedDict()
        self._catalog = ThreadPoolExecutor(CATALOG_THREADS, thread_name_prefix="catalog")
        self._catalog_failed: tuple[float, StorageError] | None = None
        self._moved: dict[str, Key] = {}
        """References in use when the registry last changed, with the loaded version they named."""
        self._variants: set[str] = set()
        self._ahead = asyncio.Lock()
        self._seen_changes = -1
        self._base_shapes: dict[str, list[int]] | None = None
        self.popularity = Popularity(window=10 * max_loaded)
        self.loads = 0
        self.evictions = 0

    # -- resolution ----------------------------------------------------------------------
    def note_changes(self, changes: int) -> bool:
        """Drop cached resolutions when the registry's change counter moved; True when it did."""
        if changes != self._seen_changes:
            self._seen_changes = changes
            # name@N never moves; a name or an alias whose version is loaded, or being loaded for a
            # request (a slow first load the poll overtakes), is in use
            moving = {ref: key for ref, key in self._resolved.items() if "@" not in ref}
            self._moved.update(
                {ref: key for ref, key in moving.items() if key in self.loaded or key in self._loading}
            )
            self._resolved.clear()
            return True
        return False

    async def load_ahead(self, variants: Iterable[str] = ()) -> list[Key]:
        """Load what references in use now name, before a request asks: versions a reference in use
        moved to (new latest, alias move) and new route variants (A/B, rollout). Returns the
        versions loaded; a version that fails its checks is logged and left to requests to report."""
        async with self._ahead:  # one run at a time: a run for a later change sees what this one left
            return await self._load_ahead(set(variants))

    async def _load_ahead(self, variants: set[str]) -> list[Key]:
        moved, new_variants = self._moved, variants - self._variants
        self._variants = variants
        self._moved = {}
        seen = self._seen_changes
        found = await asyncio.to_thread(self._resolve_all, [*moved, *new_variants])
        in_use = {ref: key for ref, key in found.items() if ref not in variants}
        if seen == self._seen_changes:
            self._resolved.update(in_use)
        else:  # the registry moved on while resolving: the run for that change resolves them afresh
            self._moved.update({ref: moved[ref] for ref in in_use})
        for ref, key in found.items():  # the traffic it will get: its predecessor's, or a request's
            if key != moved.get(ref):
                self.popularity.hit(key, self.popularity[moved[ref]] if ref in moved else 1.0)
        out = []
        for key in dict.fromkeys(found.values()):
            if key in self.loaded or key in self._loading:  # a request's load in flight: not waited for
                continue
            try:
                await self._ensure_loaded(*key, ahead=True)
            except ServingError as exc:
                log.warning("not loading %s@%s ahead: %s", *key, exc.message)
                continue
            out.append(key)
        return out

    def _resolve_all(self, refs: list[str]) -> dict[str, Key]:
        out = {}
        for ref in refs:
            try:
                out[ref] = self.registry.resolve(ref)
            except (InvalidReferenceError, NotFoundError):
                continue  # deleted since: its requests will say so
        return out

    async def resolve(self, model: str) -> tuple[str, int] | None:
        """(name, version) for an adapter reference, None for the base model."""
        if model == self.served_base or model in BASE_ALIASES:
            return None
        try:
            ref = parse_ref(model)
        except InvalidReferenceError as exc:
            raise self._not_found(model, exc) from exc
        key = str(ref)
        if key in self._resolved:
            self._resolved.move_to_end(key)
            return self._resolved[key]
        try:
            found = await self.catalog_call(self.registry.resolve, ref)
        except NotFoundError as exc:
            raise self._not_found(model, exc) from exc
        self._resolved[key] = found
        if len(self._resolved) > MAX_RESOLVED:
            self._resolved.popitem(last=False)
        return found

    def _not_found(self, model: str, exc: InvalidReferenceError | NotFoundError) -> ModelNotFoundError:
        return ModelNotFoundError(
            f"The model {model!r} does not exist: {exc.message}. Use {self.served_base!r} or a registry reference "
            "(name, name@VERSION, name:ALIAS); GET /v1/models lists them."
        )

    async def catalog_call(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` on a catalog thread. While the catalog has just failed, it raises that
        failure again at once (a StorageError: 503) rather than wait for another timeout."""
        failed = self._catalog_failed
        if failed is not None and time.monotonic() - failed[0] < CATALOG_RETRY_S:
            raise failed[1]
        try:
            out = await asyncio.get_running_loop().run_in_executor(self._catalog, fn, *args)
        except StorageError as exc:
            self._catalog_failed = (time.monotonic(), exc)
            raise
        self._catalog_failed = None
        return out

    # -- loading -------------------------------------------------------------------------
    @asynccontextmanager
    async def lease(self, model: str) -> AsyncIterator[Target]:
        """Resolve and load `model`, hold it for the request, then release it."""
        found = await self.resolve(model)
        if found is None:
            yield Target(self.served_base, None)
            return
        self.popularity.hit(found)
        loaded = await self._ensure_loaded(*found)
        loaded.in_use += 1
        loaded.last_used = time.monotonic()
        try:
            yield Target(loaded.handle.name, loaded.handle)
        finally:
            loaded.in_use -= 1
            loaded.last_used = time.monotonic()

    async def _ensure_loaded(self, name: str, version: int, ahead: bool = False) -> Loaded:
        # a version number names one set of weights forever (the registry never reuses numbers),
        # so a loaded version is served without touching its files again
        key = (name, version)
        if key in self.loaded:
            return self.loaded[key]
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:  # concurrent first requests for one version load it once
            if key in self.loaded:
                return self.loaded[key]
            started = time.perf_counter()
            self._loading.add(key)
            try:
                v = await self._load(key)
            finally:
                self._loading.discard(key)
            self.loads += 1
            if self.metrics is not None:
                self.metrics.loaded(v.ref, "ahead" if ahead else "request", time.perf_counter() - started)
            return self.loaded[key]

    async def _load(self, key: Key) -> Version:
        """Verify, check and hand version `key` to the engine (its lock held); it is in `loaded` after."""
        name, version = key
        with tracing.span("load", {"lora.version": f"{name}@{version}"}):
            v = await asyncio.to_thread(self._fetch, name, version)  # sha256 of every changed file
            await asyncio.to_thread(self._validate, v)
            handle = AdapterHandle(self._next_id, v.ref, v.path)
            self._next_id += 1
            await self._make_room()
            self._adding += 1  # concurrent loads of other versions count this slot as taken
            try:
                await self._add(handle)
                self.loaded[key] = Loaded(handle, v)
            finally:
                self._adding -= 1
        return v

    async def _add(self, handle: AdapterHandle) -> None:
        """Hand a checked version to the engine. Why an engine refuses it (its exception text can
        name server folders) goes to the log; the client gets the version and a generic reason."""
        try:
            await self.engine.add_adapter(handle)
        except AdapterLoadError as exc:
            log.warning("the engine refused %s: %s", handle.name, exc.message)
            raise AdapterLoadError(
                f"{handle.name}: the inference engine refused this adapter (the server log says why)"
            ) from exc

    def _fetch(self, name: str, version: int) -> Version:
        try:
            # a version loaded before and evicted: files unchanged since this process hashed them
            # are not read again (a load is the hot path with many adapters; bench.py --many)
            return self.registry.get(f"{name}@{version}", verify_files=True, rehash_unchanged=False)
        except NotFoundError as exc:
            raise ModelNotFoundError(exc.message) from exc
        except IntegrityError as exc:  # its message names files on this server: the log has it
            log.warning("refusing %s@%s: %s", name, version, exc)
            raise AdapterLoadError(
                f"{name}@{version} failed its integrity check: its files do not match its manifest"
            ) from exc

    def _validate(self, v: Version) -> None:
        if v.base_sha256 != self.base.weights_sha256:
            raise AdapterLoadError(
                f"{v.ref} was trained on {v.base_model} (weights sha256 {v.base_sha256[:12]}...), but this server "
                f"runs {self.base.id} (sha256 {self.base.short_sha}...): adapter for another base model"
            )
        if self._base_shapes is None:
            self._base_shapes = weight_shapes(Path(self.base.path))
        try:
            info = check_adapter(v.path, self._base_shapes)
        except InvalidAdapterError as exc:  # its message names the folder on this server: the log has it
            log.warning("refusing %s: %s", v.ref, exc)
            raise AdapterLoadError(f"{v.ref} is not a valid LoRA adapter (the server log says why)") from exc
        if info.rank > self.max_lora_rank:
            raise AdapterLoadError(
                f"{v.ref}: LoRA rank {info.rank} exceeds this server's max_lora_rank {self.max_lora_rank}"
            )
        adapted = {m.rsplit(".", 1)[-1] for m in info.module_ranks} | set(info.target_modules)
        bad = sorted(adapted & UNSUPPORTED_TARGETS)
        if bad:
            raise AdapterLoadError(f"{v.ref}: target modules {bad} are not supported by the engine")
        cfg = json.loads((v.path / "adapter_config.json").read_text())
        if cfg.get("use_dora"):
            raise AdapterLoadError(f"{v.ref}: DoRA adapters are not supported by the engine")

    async def _make_room(self) -> None:
        while len(self.loaded) + self._adding >= self.max_loaded:
            idle = [(k, v) for k, v in self.loaded.items() if v.in_use == 0 and not v.pinned]
            if not idle:
                return  # every slot busy: load anyway; the engine queues by its own max_loras
            key, victim = min(idle, key=lambda kv: (self.popularity[kv[0]], kv[1].last_used))
            del self.loaded[key]
            await self.engine.remove_adapter(victim.handle)
            self.evictions += 1
            if self.metrics is not None:
                self.metrics.adapter_evictions.inc()

    async def unload(self, model: str) -> bool:
        """Unload the version `model` names; False when it was not loaded.

        Requests in flight keep their version: an adapter in use is unloaded once they finish
        (it is unpinned at once, so eviction takes it when it is idle)."""
        key = await self.resolve(model)
        if key is None:
            raise ModelNotFoundError(f"{model!r} is the base model; only adapters can be unloaded")
        loaded = self.loaded.get(key)
        if loaded is None:
            return False
        loaded.pinned = False
        async with self._locks.setdefault(key, asyncio.Lock()):
            if loaded.in_use == 0 and key in self.loaded:
                del self.loaded[key]
                await self.engine.remove_adapter(loaded.handle)
        return True

    def describe(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        return [
            {
                "model": v.handle.name,
                "lora_id": v.handle.lora_id,
                "in_use": v.in_use,
                "pinned": v.pinned,
                "idle_s": round(now - v.last_used, 3),
            }
            for v in self.loaded.values()
        ]

    async def pin(self, model: str) -> Version:
        found = await self.resolve(model)
        if found is None:
            raise ModelNotFoundError(f"{model!r} is the base model; only adapters can be pinned")
        loaded = await self._ensure_loaded(*found)
        loaded.pinned = True
        return loaded.version

    # -- listing -------------------------------------------------------------------------
    async def servable(self) -> list[dict[str, Any]]:
        """Every version and alias whose base weights match this server's base model."""
        listed = await self.catalog_call(self.registry.list_versions)
        versions = [v for v in listed if v.base_sha256 == self.base.weights_sha256]
        out = [{"id": v.ref, "created": int(v.created)} for v in versions]
        latest: dict[str, Version] = {}
        for v in versions:
            latest[v.name] = v
            out += [{"id": f"{v.name}:{a}", "created": int(v.created), "version": v.ref} for a in v.aliases]
        out += [{"id": n, "created": int(v.created), "version": v.ref} for n, v in latest.items()]
        return out
