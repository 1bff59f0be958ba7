"""The Ray Serve application: the Router ingress deployment in front of EngineReplica deployments.

`build(settings)` makes the application; `app_builder(args)` is the import path a Ray Serve config
(KubeRay `serveConfigV2`) names; `run(settings)` is `platform serve --replicas N`.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any, Literal

import ray
from fastapi import Depends, FastAPI, Request
from ray import serve
from ray.serve import Application
from ray.serve.handle import DeploymentHandle

from registry.basemodels import BaseModel
from registry.store import Registry
from serving.app import create_app
from serving.cluster.remote import RemoteEngine, ReplicaCollector
from serving.cluster.replica import EngineReplica, replica_slots
from serving.deps import get_state, require_admin_key
from serving.settings import ServeSettings, load_settings
from serving.state import ServerState

log = logging.getLogger("lora_platform.serving")
APP_NAME = "lora-platform"
Routing = Literal["affinity", "ray", "round-robin"]
ROUTER_SLOTS = 1 << 20
"""The router's AdapterManager only resolves and verifies versions (engine replicas load them):
it keeps every version it has checked, so it never evicts and re-verifies."""


@serve.ingress()
class Router:
    """The single server's app (auth, validation, admission, A/B, evidence, encoding) on a
    RemoteEngine; GET /admin/replicas shows each engine replica's loads and the versions it served."""

    def __init__(
        self, replicas: DeploymentHandle[Any], settings: ServeSettings, multiplex: bool = True
    ) -> None:
        self.replicas, self.settings, self.multiplex = replicas, settings, multiplex

    def __serve_build_asgi_app__(self) -> FastAPI:
        def engine(settings: ServeSettings, base: BaseModel) -> RemoteEngine:
            return RemoteEngine(self.replicas, base, self.multiplex, tuple(self.settings.pin))

        def on_start(state: ServerState) -> None:
            assert isinstance(state.engine, RemoteEngine)
            state.metrics.registry.register(ReplicaCollector(state.engine.book))

        settings = self.settings.model_copy(update={"max_cpu_loras": ROUTER_SLOTS})
        app = create_app(settings, engine_factory=engine, on_start=on_start)
        app.add_api_route("/admin/replicas", replicas_view, dependencies=[Depends(require_admin_key)])
        return app


async def replicas_view(request: Request) -> dict[str, Any]:
    state = get_state(request)
    assert isinstance(state.engine, RemoteEngine)
    return {"object": "list", "data": state.engine.book.describe()}


def pin_versions(settings: ServeSettings) -> ServeSettings:
    """`pin` resolved once to immutable versions, so the router and every engine replica (a
    replacement or an autoscaled one too) hold the same versions whatever aliases do later."""
    if not settings.pin:
        return settings
    registry = Registry(settings.registry, settings.artifacts)
    try:
        pinned = [f"{name}@{version}" for name, version in map(registry.resolve, settings.pin)]
    finally:
        registry.close()
    return settings.model_copy(update={"pin": pinned})


def build(settings: ServeSettings, routing: Routing = "affinity") -> Application:
    """The application: the Router bound to the EngineReplica deployment. `routing`: "affinity"
    (AdapterAffinityRouter), "ray" (Ray's default multiplexed routing) or "round-robin" (no
    multiplexing: the baseline the benchmark compares against)."""
    settings = pin_versions(settings)
    replica_options: dict[str, Any] = {
        "name": "EngineReplica",
        "ray_actor_options": {"num_cpus": settings.replica_cpus},
        "max_ongoing_requests": settings.max_num_seqs,
        "health_check_period_s": 2,
        "health_check_timeout_s": 30,
    }
    if routing == "affinity":
        replica_options["request_router_config"] = {
            "request_router_class": "serving.cluster.affinity.AdapterAffinityRouter",
            "request_router_kwargs": {
                "spill_threshold": settings.spill_threshold,
                "slots": replica_slots(settings),
            },
        }
    if settings.max_replicas is not None:
        replica_options["autoscaling_config"] = {
            "min_replicas": settings.min_replicas if settings.min_replicas is not None else 1,
            "max_replicas": settings.max_replicas,
            "initial_replicas": settings.replicas,
            "target_ongoing_requests": settings.target_ongoing_requests,
        }
    else:
        replica_options["num_replicas"] = settings.replicas or 1
    replicas = serve.deployment(**replica_options)(EngineReplica).bind(settings)
    router = serve.deployment(
        name="Router", ray_actor_options={"num_cpus": 0}, max_ongoing_requests=settings.max_queue
    )(Router)
    app: Application = router.bind(replicas, settings, routing != "round-robin")
    return app


def app_builder(args: dict[str, Any]) -> Application:
    """For a Ray Serve config's `import_path` (KubeRay): `args` are ServeSettings fields (the
    environment fills the rest, e.g. LORA_PLATFORM_REGISTRY from a Secret)."""
    args = dict(args)
    return build(load_settings(args.pop("config", None), **args))


def run(settings: ServeSettings) -> None:
    """Deploy on Ray (the cluster at `ray_address`, or a local instance) and serve on host:port
    until SIGINT/SIGTERM; then delete the application (and stop a local Ray)."""
    ray.init(address=settings.ray_address, include_dashboard=False)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": settings.host, "port": settings.port})
        serve.run(build(settings), name=APP_NAME, route_prefix="/")
        log.warning(
            "serving on http://%s:%d with %s engine replicas", settings.host, settings.port, settings.replicas
        )
        stop.wait()
    finally:
        serve.delete(APP_NAME)
        if settings.ray_address is None:
            serve.shutdown()  # type: ignore[no-untyped-call]
        ray.shutdown()
