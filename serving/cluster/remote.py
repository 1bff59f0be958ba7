"""The ingress's engine: tokenizes locally, generates on an engine replica through a DeploymentHandle."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import AsyncGenerator, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from ray.exceptions import RayActorError
from ray.serve.exceptions import DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator

from registry.basemodels import BaseModel
from serving.cluster import BASE_MODEL_ID
from serving.cluster.replica import ReplicaReport
from serving.engine.base import AdapterHandle, Delta, Engine, GenParams, load_tokenizer
from serving.errors import ServiceUnavailableError

log = logging.getLogger("lora_platform.serving")
REPLICA_GONE = (RayActorError, DeploymentUnavailableError)


class ReplicaBook:
    """The latest report of every engine replica, and which replica served which version."""

    def __init__(self) -> None:
        self.reports: dict[str, ReplicaReport] = {}
        self.served: Counter[tuple[str, str]] = Counter()

    def note(self, report: ReplicaReport, model_id: str) -> None:
        self.reports[report.replica] = report
        self.served[(report.replica, model_id)] += 1

    def describe(self) -> list[dict[str, Any]]:
        return [
            {
                "replica": r.replica,
                "pid": r.pid,
                "adapter_loads": r.loads,
                "evictions": r.evictions,
                "loaded": list(r.loaded),
                "served": {m: n for (rep, m), n in sorted(self.served.items()) if rep == r.replica},
            }
            for r in self.reports.values()
        ]


class ReplicaCollector:
    """/metrics series with a `replica` label, from the replicas' latest reports."""

    def __init__(self, book: ReplicaBook) -> None:
        self.book = book

    def collect(self) -> Iterator[Metric]:
        loads = CounterMetricFamily(
            "lora_replica_adapter_loads", "Adapter loads by engine replica", labels=["replica"]
        )
        loaded = GaugeMetricFamily(
            "lora_replica_loaded_adapters", "Adapters loaded by engine replica", labels=["replica"]
        )
        served = CounterMetricFamily(
            "lora_replica_requests", "Requests by engine replica and version", labels=["replica", "model"]
        )
        for r in self.book.reports.values():
            loads.add_metric([r.replica], r.loads)
            loaded.add_metric([r.replica], len(r.loaded))
        for (replica, model), n in self.book.served.items():
            served.add_metric([replica, model], n)
        yield from (loads, loaded, served)


class RemoteEngine(Engine):
    """Engine interface over Ray Serve engine replicas.

    With `multiplex` (the default) each call carries `multiplexed_model_id`, so Ray routes it to a
    replica that holds the version; without it Ray spreads calls over replicas (the baseline the
    benchmark compares against). A call that fails because its replica died before sending any
    output is retried once on another replica; after the first delta the failure ends the request.
    """

    name = "ray"

    def __init__(
        self,
        handle: DeploymentHandle[Any],
        base: BaseModel,
        multiplex: bool = True,
        pinned: tuple[str, ...] = (),
        chat_template: str | None = None,
    ) -> None:
        self.handle, self.base, self.multiplex = handle, base, multiplex
        self.chat_template = chat_template
        try:  # by value, over Ray Serve's gRPC transport: 1.3 ms a call here instead of 3 ms
            self.streaming = handle.options(stream=True, _by_reference=False)
        except TypeError:  # a Ray Serve without that (private) option: Ray's actor calls
            self.streaming = handle.options(stream=True)
        self.pinned = frozenset(pinned)
        """Versions every replica loaded at start (`--pin`): routed to the least loaded replica."""
        self.book = ReplicaBook()
        self._tokenizer: Any = None
        self._running = 0
        self._draining: set[asyncio.Future[None]] = set()

    async def start(self) -> None:
        self._tokenizer = await asyncio.to_thread(load_tokenizer, self.base.path, self.chat_template)

    async def shutdown(self) -> None:
        return None

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    async def add_adapter(self, adapter: AdapterHandle) -> None:
        """Nothing to do here: the replica that gets the version's first request loads it."""

    async def remove_adapter(self, adapter: AdapterHandle) -> None:
        """Nothing to do here: Ray's multiplexed LRU unloads versions on each replica."""

    async def generate(
        self, request_id: str, prompt_ids: list[int], params: GenParams, adapter: AdapterHandle | None
    ) -> AsyncGenerator[list[Delta], None]:
        model_id = adapter.name if adapter is not None else BASE_MODEL_ID
        handle = self.streaming
        if self.multiplex and model_id not in self.pinned:  # pinned: on every replica
            handle = handle.options(multiplexed_model_id=model_id)
        self._running += 1
        try:
            for attempt in (1, 2):
                sent = drained = False
                finished: set[int] = set()
                stream = handle.generate.remote(request_id, model_id, prompt_ids, params)
                assert isinstance(stream, DeploymentResponseGenerator)
                try:
                    async for item in stream:
                        if isinstance(item, tuple):  # the first batch comes with the replica's report
                            report, item = item
                            self.book.note(report, model_id)
                        sent = True
                        for delta in item:  # a replica's clock may be another host's
                            delta.times = None
                            if delta.finish_reason is not None:
                                finished.add(delta.index)
                        yield item
                        if len(finished) == params.n:  # answer now: the stream's end comes later
                            drained = True
                            self.drain(stream)
                            return
                    return
                except REPLICA_GONE as exc:
                    if sent or attempt == 2:
                        raise ServiceUnavailableError(
                            "the engine replica serving this request went away; retry",
                            headers={"Retry-After": "1"},
                        ) from exc
                    log.warning("engine replica gone before answering %s; retrying", request_id)
                finally:
                    if not drained:  # a no-op when it finished; aborts the replica's request otherwise
                        stream.cancel()  # type: ignore[no-untyped-call]
        finally:
            self._running -= 1

    def drain(self, stream: DeploymentResponseGenerator[Any]) -> None:
        """Read a finished request's stream to its end in the background (the replica sends its
        end after the last delta: the client need not wait for it)."""

        async def read() -> None:
            with contextlib.suppress(Exception):  # the answer is out; nothing is lost
                async for _ in stream:
                    pass

        task = asyncio.ensure_future(read())
        self._draining.add(task)
        task.add_done_callback(self._draining.discard)

    async def check_health(self) -> None:
        """The ingress stays up; Ray Serve replaces engine replicas whose health check fails."""

    def running(self) -> int:
        return self._running
