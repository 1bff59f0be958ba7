"""Admin routes (need the admin key): adapter loading and A/B route changes. Catalog writes
run in a worker thread, never on the event loop that streams every running request."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from registry.routes import set_weights, start_route, stop_route
from serving.deps import State, require_admin_key

router = APIRouter(prefix="/admin", dependencies=[Depends(require_admin_key)])


class AdapterAction(BaseModel):
    model: str
    """A registry reference (name, name@3, name:alias); never a path."""
    pin: bool = False


class VariantSpec(BaseModel):
    ref: str
    weight: float = Field(ge=0)


class RouteSpec(BaseModel):
    variants: list[VariantSpec] = Field(min_length=1)
    shadow: str | None = None
    shadow_share: float = Field(0.0, ge=0, le=1)


@router.get("/adapters")
async def adapters(state: State) -> dict[str, Any]:
    return {
        "loaded": state.adapters.describe(),
        "loads": state.adapters.loads,
        "evictions": state.adapters.evictions,
    }


@router.post("/adapters/load")
async def load(body: AdapterAction, state: State) -> dict[str, Any]:
    """Load (and optionally pin) a version; idempotent."""
    if body.pin:
        v = await state.adapters.pin(body.model)
        return {"model": v.ref, "loaded": True, "pinned": True}
    async with state.adapters.lease(body.model) as target:
        return {"model": target.served_name, "loaded": True, "pinned": False}


@router.post("/adapters/unload")
async def unload(body: AdapterAction, state: State) -> dict[str, Any]:
    """Unload a version (after its in-flight requests); idempotent."""
    return {"model": body.model, "unloaded": await state.adapters.unload(body.model)}


@router.put("/routes/{name}")
async def put_route(name: str, body: RouteSpec, state: State) -> dict[str, Any]:
    """Create or change an A/B route; every replica applies it within a second."""
    variants = [(v.ref, v.weight) for v in body.variants]
    change = set_weights if name in state.routes else start_route
    route = await asyncio.to_thread(change, state.registry, name, variants, body.shadow, body.shadow_share)
    await state.refresh()
    return {"name": route.name, **route.spec()}


@router.delete("/routes/{name}")
async def delete_route(name: str, state: State) -> dict[str, Any]:
    await asyncio.to_thread(stop_route, state.registry, name)
    await state.refresh()
    return {"name": name, "stopped": True}
