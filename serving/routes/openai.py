"""OpenAI-compatible routes: /v1/models, /v1/completions, /v1/chat/completions."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, StreamingResponse

from serving.deps import State, require_api_key
from serving.generation import build_job, complete
from serving.protocol import ChatCompletionRequest, CompletionRequest

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
        for m in state.adapters.servable()
    ]
    return {"object": "list", "data": [base, *adapters]}


@router.post("/chat/completions", response_model=None)
async def chat_completions(req: ChatCompletionRequest, state: State) -> JSONResponse | StreamingResponse:
    return await _run(state, req)


@router.post("/completions", response_model=None)
async def completions(req: CompletionRequest, state: State) -> JSONResponse | StreamingResponse:
    return await _run(state, req)


async def _run(
    state: State, req: ChatCompletionRequest | CompletionRequest
) -> JSONResponse | StreamingResponse:
    state.admit()
    released = False

    def release(*_: Any) -> None:
        nonlocal released
        if not released:
            released = True
            state.release()

    try:
        job = build_job(state, req, req.model)
        return await complete(state, job, on_done=release)
    except BaseException:
        release()
        raise
