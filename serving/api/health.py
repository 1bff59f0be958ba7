"""/health (engine alive; "degraded" while A/B evidence or logged payloads are not being written),
/ready (model and pinned adapters warm), /metrics (Prometheus)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse

from serving.deps import get_state, require_metrics_key
from serving.errors import ServingError

router = APIRouter()


@router.get("/health")
async def health(request: Request) -> JSONResponse:
    try:
        state = get_state(request)
        await state.engine.check_health()
    except ServingError as exc:
        return JSONResponse(exc.envelope(), status_code=503)
    body: dict[str, Any] = {"status": "ok", "engine": state.engine.name, "catalog": "ok"}
    if state.catalog_down:
        body["status"], body["catalog"] = "degraded", "unavailable"
    if state.evidence is not None:
        evidence = state.evidence.stats()
        body["evidence"] = asdict(evidence)
        if not evidence.writing:
            body["status"] = "degraded"
    if state.payloads is not None:
        payloads = state.payloads.writer.stats()
        body["payloads"] = asdict(payloads)
        if not payloads.writing:
            body["status"] = "degraded"
    return JSONResponse(body)


@router.get("/ready")
async def ready(request: Request) -> JSONResponse:
    state = getattr(request.app.state, "server", None)
    if state is None or not state.ready or state.draining:
        return JSONResponse({"status": "not ready"}, status_code=503)
    pinned = [v.handle.name for v in state.adapters.loaded.values() if v.pinned]
    return JSONResponse({"status": "ready", "base_model": state.served_base, "pinned": pinned})


@router.get("/metrics", dependencies=[Depends(require_metrics_key)])
async def metrics(request: Request) -> Response:
    state = get_state(request)
    state.metrics.loaded_adapters.set(len(state.adapters.loaded))
    state.metrics.engine_running.set(state.engine.running())
    state.metrics.lora_info.max_lora = state.settings.max_loras
    state.metrics.evidence.observe(state.evidence.stats() if state.evidence is not None else None)
    state.metrics.payload_writer.observe(
        state.payloads.writer.stats() if state.payloads is not None else None
    )
    return Response(state.metrics.render(), media_type="text/plain; version=0.0.4")
