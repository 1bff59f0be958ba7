"""The FastAPI application: `create_app()` builds it, the lifespan starts and stops the engine."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from registry.basemodels import BaseModel, resolve_base_model
from registry.errors import RegistryError, StorageError
from registry.store import Registry
from serving import tracing
from serving.adapters import AdapterManager
from serving.api import admin, health, openai
from serving.deps import check_admin_key, check_api_key, check_metrics_key
from serving.engine.base import Engine
from serving.errors import (
    BadRequestError,
    ClientGone,
    EngineDeadError,
    HTTPStatusError,
    InternalError,
    ServingError,
    from_registry,
)
from serving.experiments.evidence import EvidenceWriter
from serving.experiments.rollout import controller_id, run_controller
from serving.guard import BodyRefused, ErrorResponse, Guard, error_response
from serving.metrics import Metrics
from serving.payloads import PayloadLogger, load_redactor, upkeep
from serving.settings import ServeSettings
from serving.state import ServerState

log = logging.getLogger("lora_platform.serving")


def context_length(model_dir: Path) -> int:
    """The model's own maximum context (config.json max_position_embeddings)."""
    config = json.loads((model_dir / "config.json").read_text())
    return int(config.get("max_position_embeddings") or 2048)


def make_engine(settings: ServeSettings, base: Any) -> Engine:
    if settings.engine == "peft":
        from serving.engine.peft import PeftEngine

        return PeftEngine(settings, base)
    from serving.engine.vllm import VLLMEngine

    return VLLMEngine(settings, base)


async def _watch(state: ServerState, app: FastAPI) -> None:
    """Poll the registry's change counter (new versions, alias moves, routes apply within a
    second) and the engine's health (a dead engine stops the server, which exits non-zero)."""
    while True:
        await _follow_catalog(state)
        try:
            await state.engine.check_health()
        except EngineDeadError:
            log.error("the inference engine is dead; stopping the server")
            state.engine_dead = True
            state.ready = False
            server = getattr(app.state, "uvicorn_server", None)
            if server is not None:
                server.should_exit = True
            return
        await asyncio.sleep(state.settings.refresh_interval_s)


async def _follow_catalog(state: ServerState) -> None:
    """One poll of the catalog. An outage is logged once (not every poll); meanwhile the server
    keeps serving what it has resolved and loaded, and reconnects by itself."""
    try:
        await state.refresh()
    except StorageError as exc:
        if not state.catalog_down:
            log.warning("catalog unavailable (%s): serving resolved references and loaded versions", exc)
        state.catalog_down = True
        return
    except Exception:  # nothing may stop the watcher
        log.exception("registry refresh failed")
        return
    if state.catalog_down:
        log.warning("catalog reachable again")
    state.catalog_down = False


@dataclass(frozen=True)
class Startup:
    """What `check_startup` resolved before the engine starts; the lifespan uses it as is."""

    base: BaseModel
    registry: Registry


EngineFactory = Callable[[ServeSettings, BaseModel], Engine]
"""Builds the app's engine from the effective settings and the base model."""


async def _start(
    app: FastAPI,
    settings: ServeSettings,
    startup: Startup | None,
    engine_factory: EngineFactory,
    on_start: Callable[[ServerState], None] | None,
) -> ServerState:
    """Start the engine, load the pins and the catalog; on failure, the engine is stopped again."""
    tracing.init()
    base = startup.base if startup else resolve_base_model(settings.base_model)
    registry = startup.registry if startup else Registry(settings.registry, settings.artifacts)
    model_len = context_length(base.path)
    effective = settings.model_copy(
        update={"max_model_len": min(settings.max_model_len or model_len, model_len)}
    )
    app.state.settings = effective
    engine = engine_factory(effective, base)
    await engine.start()
    served = settings.served_model_name or base.id
    metrics = Metrics()
    adapters = AdapterManager(
        registry, engine, base, served, settings.max_lora_rank, settings.max_cpu_loras, metrics
    )
    redactor = load_redactor(settings.payload_redactor)
    evidence = EvidenceWriter(registry.evidence(), redactor=redactor)
    payloads = (
        PayloadLogger(registry.payloads(), settings, engine.tokenizer.decode)
        if settings.log_payloads
        else None
    )
    state = ServerState(effective, base, registry, engine, adapters, evidence, payloads, metrics=metrics)
    app.state.server = state
    if on_start is not None:
        on_start(state)
    try:
        for ref in settings.pin:
            await adapters.pin(ref)
        await state.refresh()
    except BaseException:
        evidence.close()
        if payloads is not None:
            payloads.close()
        await engine.shutdown()
        raise
    state.tasks.append(asyncio.create_task(_watch(state, app)))
    state.tasks.append(asyncio.create_task(upkeep(state)))
    state.tasks.append(asyncio.create_task(run_controller(state, f"{controller_id()}:{settings.port}")))
    state.ready = True
    return state


def create_app(
    settings: ServeSettings | None = None,
    startup: Startup | None = None,
    engine_factory: EngineFactory = make_engine,
    on_start: Callable[[ServerState], None] | None = None,
) -> FastAPI:
    """The server's app. `startup` is what `check_startup` resolved; `engine_factory` and
    `on_start` (called once the state is built) let the Ray Serve router (serving/cluster) run
    this same app on an engine that forwards to replicas."""
    settings = settings or ServeSettings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:  # a failure is kept for `serve`, which reports it in one line
            state = await _start(app, settings, startup, engine_factory, on_start)
        except Exception as exc:
            app.state.startup_error = exc
            raise
        try:
            yield
        finally:
            state.ready = False
            for task in state.tasks:
                task.cancel()
            if state.tasks:  # the rollout controller gives its lease back
                await asyncio.wait(state.tasks, timeout=5)
            if state.evidence is not None:
                state.evidence.close()
            if state.payloads is not None:
                state.payloads.close()
            await state.engine.shutdown()
            tracing.flush()

    docs = settings.docs_enabled  # off by default behind an API key: the schema maps the surface
    app = FastAPI(
        title="lora-platform",
        version="0.1.0",
        lifespan=lifespan,
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
        openapi_url="/openapi.json" if docs else None,
    )
    app.state.settings = settings
    checks = {
        "/v1": partial(check_api_key, settings),
        "/admin": partial(check_admin_key, settings),
        "/metrics": partial(check_metrics_key, settings),
    }
    app.add_middleware(
        Guard,
        max_bytes=settings.max_body_bytes,
        checks=checks,
        allowed_hosts=settings.allowed_hosts,
        body_timeout_s=settings.body_timeout_s,
    )
    install_error_handlers(app)
    app.include_router(openai.router)
    app.include_router(health.router)
    app.include_router(admin.router)
    if settings.admin_key:  # the human review pages, behind the admin key
        from serving.review.web import router as review_router

        app.include_router(review_router)
    return app


def install_error_handlers(app: FastAPI) -> None:
    """The one mapper from exceptions to OpenAI's error envelope; each error response is counted
    once in `lora_errors_total` here (stream errors, sent after the 200, by the stream)."""

    def respond(request: Request, exc: ServingError) -> ErrorResponse:
        state = getattr(request.app.state, "server", None)
        if state is not None:  # labelled by type and status code
            state.metrics.errors.labels("", exc.label).inc()
        return error_response(exc)

    @app.exception_handler(ServingError)
    async def _serving(request: Request, exc: ServingError) -> ErrorResponse:
        return respond(request, exc)

    @app.exception_handler(RegistryError)
    async def _registry(request: Request, exc: RegistryError) -> ErrorResponse:
        return respond(request, from_registry(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> ErrorResponse:
        return respond(request, _invalid(exc))

    @app.exception_handler(BodyRefused)
    async def _refused(request: Request, exc: BodyRefused) -> ErrorResponse:
        # Guard has sent (and counted) the 413 or 408 already; this only unwinds the route
        return error_response(HTTPStatusError(exc.status_code, "request body refused"))

    @app.exception_handler(ClientDisconnect)
    async def _gone(request: Request, exc: ClientDisconnect) -> ErrorResponse:
        # the client left while its body was read: nobody reads this answer, nothing to log
        return error_response(ClientGone("the client disconnected"))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> ErrorResponse:
        return respond(request, HTTPStatusError(exc.status_code, str(exc.detail), dict(exc.headers or {})))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> ErrorResponse:
        log.exception("unhandled error")
        return respond(request, InternalError(f"internal error: {type(exc).__name__}"))


def _invalid(exc: RequestValidationError) -> BadRequestError:
    """A 400 naming each invalid field (the first one's top-level field as `param`)."""
    errors = exc.errors()
    first = [str(p) for p in (errors[0].get("loc", ()) if errors else ()) if p != "body"]
    param = first[0] if first else None
    message = "; ".join(
        f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body')}: {e.get('msg')}" for e in errors
    )
    return BadRequestError(message or "invalid request", param=param)
