"""OpenAI-compatible routes: /v1/models, /v1/completions, /v1/chat/completions, /v1/feedback."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends, Request, Response

from serving.deps import State, require_api_key
from serving.errors import BadRequestError, CompletionNotFoundError, PermissionDeniedError
from serving.generation import complete
from serving.identity import bearer
from serving.protocol import ChatCompletionRequest, CompletionRequest, FeedbackRequest

router = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)])


@router.get("/models")
async def list_models(state: State) -> dict[str, Any]:
    base = {
        "id": state.served_base,
        "object": "model",
        "created": 0,
        "owned_by": "lora-platform",
        "root": state.base.id,
        "parent": None,
    }
    adapters = [
        {
            "id": m["id"],
            "object": "model",
            "created": m["created"],
            "owned_by": "lora-platform",
            "root": m.get("version", m["id"]),
            "parent": state.served_base,
        }
        for m in await state.adapters.servable()
        if m["id"] not in state.routes
    ]
    routes = [
        {
            "id": r.name,
            "object": "model",
            "created": int(r.created),
            "owned_by": "lora-platform",
            "root": r.name,
            "parent": state.served_base,
            "variants": [{"ref": v.ref, "weight": v.weight} for v in r.variants],
        }
        for r in state.routes.values()
    ]
    return {"object": "list", "data": [base, *adapters, *routes]}


@router.post("/chat/completions", response_model=None)
async def chat_completions(req: ChatCompletionRequest, request: Request, state: State) -> Response:
    return await complete(state, req, request)


@router.post("/completions", response_model=None)
async def completions(req: CompletionRequest, request: Request, state: State) -> Response:
    return await complete(state, req, request)


@router.post("/feedback")
async def feedback(body: FeedbackRequest, request: Request, state: State) -> dict[str, Any]:
    """Attribute a score (0 to 1, or thumbs up/down) to a completion: to the variant that answered
    it (A/B routes) and to its logged payload (`--log-payloads`). One feedback per completion (a
    later one replaces the earlier), accepted only with the API key that made the request."""
    if body.score is None and body.thumbs is None:
        raise BadRequestError("give a score (0 to 1) or thumbs ('up' or 'down')", param="score")
    routed = None if state.evidence is None else await asyncio.to_thread(state.evidence.lookup, body.id)
    payloads = state.payloads
    logged, logged_key = (
        (False, None) if payloads is None else await asyncio.to_thread(payloads.owner, body.id)
    )
    if routed is None and not logged:
        raise CompletionNotFoundError(
            f"no routed or logged completion with id {body.id!r} (feedback applies to A/B routes "
            "and to the adapters the server logs with --log-payloads)",
            param="id",
        )
    given = bearer(request.headers)
    owners = [logged_key] if logged else []
    if routed is not None:
        owners.append(routed[2])
    if not all(state.hasher.same_key(owner, given) for owner in owners):
        raise PermissionDeniedError(
            "feedback on a completion must be sent with the API key that made the request",
            code="feedback_key_mismatch",
        )
    thumbs = None if body.thumbs is None else int(body.thumbs == "up")
    answer: dict[str, Any] = {"id": body.id, "recorded": True}
    if routed is not None and state.evidence is not None:
        route, variant, _ = routed
        await asyncio.to_thread(
            state.evidence.feedback, body.id, route, variant, body.score, thumbs, body.comment
        )
        answer |= {"route": route, "variant": variant}
    if logged and payloads is not None:
        await asyncio.to_thread(payloads.feedback, body.id, body.score, thumbs, body.comment)
    return answer
