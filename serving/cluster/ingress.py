"""The Ray Serve application: the ingress app in front of EngineReplica deployments.

Two ways to run the ingress app (`ingress_app`: the single server's app on a RemoteEngine):
- `platform serve --replicas N` (`--ingress process`, the default): the app runs under uvicorn in
  the `platform serve` process itself, and Ray Serve runs only the engine replicas
  (`engine_replicas`, no HTTP proxy): one Ray hop per request (the handle call to a replica);
- `build(settings)`, also what `--ingress ray` and `app_builder(args)` (the import path a Ray
  Serve config, KubeRay `serveConfigV2`, names) deploy: an `Ingress` deployment behind Ray
  Serve's HTTP proxy, which Ray places and restarts like any deployment: two Ray hops per request
  (proxy -> Ingress -> EngineReplica).
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
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
INGRESS_SLOTS = 1 << 20
"""The ingress's AdapterManager only resolves and verifies versions (engine replicas load them):
it keeps every version it has checked, so it never evicts and re-verifies."""


@serve.ingress()
class Ingress:
    """The single server's app (auth, validation, admission, A/B, evidence, encoding) on a
    RemoteEngine; GET /admin/replicas shows each engine replica's loads and the versions it served."""

    def __init__(
        self, replicas: DeploymentHandle[Any], settings: ServeSettings, multiplex: bool = True
    ) -> None:
        self.replicas, self.settings, self.multiplex = replicas, settings, multiplex

    def __serve_build_asgi_app__(self) -> FastAPI:
        return ingress_app(self.settings, self.replicas, self.multiplex)


def ingress_app(settings: ServeSettings, replicas: DeploymentHandle[Any], multiplex: bool = True) -> FastAPI:
    """The single server's app whose engine forwards to the engine replicas behind `replicas`."""

    def engine(settings: ServeSettings, base: BaseModel) -> RemoteEngine:
        return RemoteEngine(replicas, base, multiplex, tuple(settings.pin), settings.chat_template)

    def on_start(state: ServerState) -> None:
        assert isinstance(state.engine, RemoteEngine)
        state.metrics.registry.register(ReplicaCollector(state.engine.book))

    settings = settings.model_copy(update={"max_cpu_loras": INGRESS_SLOTS})
    app = create_app(settings, engine_factory=engine, on_start=on_start)
    app.add_api_route("/admin/replicas", replicas_view, dependencies=[Depends(require_admin_key)])
    return app


async def replicas_view(request: Request) -> dict[str, Any]:
    state = get_state(request)
    assert isinstance(state.engine, RemoteEngine)
    return {"object": "list", "data": state.engine.book.describe()}


def pin_versions(settings: ServeSettings) -> ServeSettings:
    """`pin` resolved once to immutable versions, so the ingress and every engine replica (a
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
    """The application: the Ingress bound to the EngineReplica deployment. `routing`: "affinity"
    (AdapterAffinityRouter), "ray" (Ray's default multiplexed routing) or "round-robin" (no
    multiplexing: the baseline the benchmark compares against)."""
    settings = pin_versions(settings)
    ingress = serve.deployment(
        name="Ingress", ray_actor_options={"num_cpus": 0}, max_ongoing_requests=settings.max_queue
    )(Ingress)
    app: Application = ingress.bind(engines_app(settings, routing), settings, routing != "round-robin")
    return app


def engines_app(settings: ServeSettings, routing: Routing = "affinity") -> Application:
    """The EngineReplica deployment (`settings.pin` already resolved to versions)."""
    replica_options: dict[str, Any] = {
        "name": "EngineReplica",
        "ray_actor_options": {"num_cpus": settings.replica_cpus},
        "max_ongoing_requests": settings.max_num_seqs,
        "health_check_period_s": 2,
        "health_check_timeout_s": 30,
        # the ingress logs every request; a line per call here too would only travel to each driver
        "logging_config": {"enable_access_log": False},
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
    app: Application = serve.deployment(**replica_options)(EngineReplica).bind(settings)
    return app


def app_builder(args: dict[str, Any]) -> Application:
    """For a Ray Serve config's `import_path` (KubeRay): `args` are ServeSettings fields (the
    environment fills the rest, e.g. LORA_PLATFORM_REGISTRY from a Secret)."""
    args = dict(args)
    return build(load_settings(args.pop("config", None), **args))


@contextmanager
def on_ray(settings: ServeSettings, **serve_options: Any) -> Iterator[None]:
    """Ray (the cluster at `ray_address`, or a local instance) with Serve started; on exit the
    application is deleted (and a local Ray stopped)."""
    ray.init(address=settings.ray_address, include_dashboard=False)
    try:
        serve.start(**serve_options)
        yield
    finally:
        serve.delete(APP_NAME)
        if settings.ray_address is None:
            serve.shutdown()  # type: ignore[no-untyped-call]
        ray.shutdown()


@contextmanager
def engine_replicas(settings: ServeSettings) -> Iterator[tuple[ServeSettings, DeploymentHandle[Any]]]:
    """The engine replicas deployed on Ray without Ray's HTTP proxy, for an ingress app in this
    process: the settings with pins resolved, and the handle."""
    with on_ray(settings, proxy_location="Disabled"):
        settings = pin_versions(settings)
        handle: DeploymentHandle[Any] = serve.run(engines_app(settings), name=APP_NAME, route_prefix=None)
        log.warning("%s engine replicas on Ray Serve", settings.replicas)
        yield settings, handle


def run(settings: ServeSettings) -> None:
    """`--ingress ray`: deploy the Ingress and the engine replicas on Ray, Ray's HTTP proxy on
    host:port, until SIGINT/SIGTERM; then delete the application (and stop a local Ray)."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with on_ray(settings, http_options={"host": settings.host, "port": settings.port}):
        serve.run(build(settings), name=APP_NAME, route_prefix="/")
        log.warning(
            "serving on http://%s:%d with %s engine replicas", settings.host, settings.port, settings.replicas
        )
        stop.wait()
