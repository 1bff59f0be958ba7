"""Chat and text completions: validate, render, resolve the adapter, run, respond or stream.

The routes call `complete()`; it owns admission, the adapter lease for the request's whole
life (an in-flight request keeps its version), usage, metrics and OpenAI's response shapes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from serving.engine.base import Delta, GenParams, TokenLogprob
from serving.errors import BadRequestError, ServingError, UnavailableError
from serving.protocol import ChatCompletionRequest, CompletionRequest, new_id, now
from serving.state import ServerState

DEFAULT_MAX_TOKENS = 256


class ClientGone(ServingError):
    """The client closed the connection; nobody reads the answer (nginx's 499)."""

    status = 499
    type = "client_closed_request"


@dataclass
class Job:
    """One request, normalized for both endpoints."""

    chat: bool
    model: str
    prompt_ids: list[int]
    params: GenParams
    stream: bool
    include_usage: bool
    id: str
    route: str = ""
    variant: str = ""
    user_hash: str | None = None
    extra_headers: dict[str, str] = field(default_factory=dict)


def _max_tokens(state: ServerState, req: ChatCompletionRequest | CompletionRequest, prompt_len: int) -> int:
    s = state.settings
    asked = getattr(req, "max_completion_tokens", None) or req.max_tokens
    if asked is not None and asked > s.max_tokens_cap:
        raise BadRequestError(
            f"max_tokens {asked} exceeds this server's cap of {s.max_tokens_cap}", param="max_tokens"
        )
    assert s.max_model_len is not None  # resolved at start-up
    room = s.max_model_len - prompt_len
    if room <= 0 or (asked is not None and asked > room):
        raise BadRequestError(
            f"This model's maximum context length is {s.max_model_len} tokens. However, you requested "
            f"{prompt_len + (asked or 0)} tokens ({prompt_len} in the prompt, {asked or 0} for the completion). "
            "Please reduce the prompt or max_tokens.",
            param="messages" if isinstance(req, ChatCompletionRequest) else "prompt",
            code="context_length_exceeded",
        )
    return asked if asked is not None else min(DEFAULT_MAX_TOKENS, room, s.max_tokens_cap)


def _params(state: ServerState, req: ChatCompletionRequest | CompletionRequest, prompt_len: int) -> GenParams:
    if req.n > state.settings.max_n:
        raise BadRequestError(f"n={req.n} exceeds this server's cap of {state.settings.max_n}", param="n")
    stops = req.stop_list()
    if len(stops) > 4:
        raise BadRequestError("at most 4 stop sequences", param="stop")
    if isinstance(req, ChatCompletionRequest):
        logprobs = (req.top_logprobs or 0) if req.logprobs else None
    else:
        logprobs = req.logprobs
    return GenParams(
        max_tokens=_max_tokens(state, req, prompt_len),
        temperature=req.temperature,
        top_p=req.top_p,
        n=req.n,
        stop=tuple(stops),
        seed=req.seed,
        logprobs=logprobs,
        presence_penalty=req.presence_penalty,
        frequency_penalty=req.frequency_penalty,
    )


def render(state: ServerState, req: ChatCompletionRequest | CompletionRequest) -> list[int]:
    tok = state.engine.tokenizer
    if isinstance(req, ChatCompletionRequest):
        messages = [
            {"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in req.messages
        ]
        try:
            ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        except Exception as exc:  # jinja template errors (e.g. roles the template refuses)
            raise BadRequestError(
                f"the chat template could not render these messages: {exc}", param="messages"
            ) from exc
        ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
    elif isinstance(req.prompt, str):
        ids = list(tok(req.prompt)["input_ids"])
    elif req.prompt and all(isinstance(t, int) for t in req.prompt):
        ids = [int(t) for t in req.prompt]
        vocab = len(tok)
        if any(t < 0 or t >= vocab for t in ids):
            raise BadRequestError(f"prompt token ids must be in [0, {vocab})", param="prompt")
    elif isinstance(req.prompt, list) and len(req.prompt) == 1 and isinstance(req.prompt[0], str):
        ids = list(tok(req.prompt[0])["input_ids"])
    else:
        raise BadRequestError(
            "prompt must be a string, a list with one string, or a list of token ids", param="prompt"
        )
    if not ids:
        raise BadRequestError(
            "the prompt is empty", param="messages" if isinstance(req, ChatCompletionRequest) else "prompt"
        )
    return ids


def build_job(state: ServerState, req: ChatCompletionRequest | CompletionRequest, model: str) -> Job:
    chat = isinstance(req, ChatCompletionRequest)
    prompt_ids = render(state, req)
    return Job(
        chat=chat,
        model=model,
        prompt_ids=prompt_ids,
        params=_params(state, req, len(prompt_ids)),
        stream=req.stream,
        include_usage=bool(req.stream_options and req.stream_options.include_usage),
        id=new_id("chatcmpl" if chat else "cmpl"),
    )


def _chat_logprobs(lps: list[TokenLogprob] | None) -> dict[str, Any] | None:
    if lps is None:
        return None
    return {
        "content": [
            {
                "token": lp.token,
                "logprob": lp.logprob,
                "bytes": list(lp.token.encode()),
                "top_logprobs": [{"token": t, "logprob": v, "bytes": list(t.encode())} for t, v in lp.top],
            }
            for lp in lps
        ]
    }


def _text_logprobs(lps: list[TokenLogprob] | None, offset: int) -> dict[str, Any] | None:
    if lps is None:
        return None
    offsets = []
    for lp in lps:
        offsets.append(offset)
        offset += len(lp.token)
    return {
        "tokens": [lp.token for lp in lps],
        "token_logprobs": [lp.logprob for lp in lps],
        "top_logprobs": [dict(lp.top) for lp in lps],
        "text_offset": offsets,
    }


class _Tracker:
    """Usage, timing and metrics of one job."""

    def __init__(self, state: ServerState, job: Job, served: str) -> None:
        self.state, self.job, self.served = state, job, served
        self.start = time.monotonic()
        self.first: float | None = None
        self.completion_tokens = 0

    def saw(self, deltas: list[Delta]) -> None:
        n = sum(len(d.token_ids) for d in deltas)
        if n and self.first is None:
            self.first = time.monotonic()
        self.completion_tokens += n

    def usage(self) -> dict[str, int]:
        p = len(self.job.prompt_ids)
        return {
            "prompt_tokens": p,
            "completion_tokens": self.completion_tokens,
            "total_tokens": p + self.completion_tokens,
        }

    def finish(self, status: str) -> None:
        m, labels = self.state.metrics, (self.served, self.job.route, self.job.variant)
        m.requests.labels(*labels, status).inc()
        if status != "ok":
            m.errors.labels(self.served, status).inc()
        m.tokens.labels(*labels, "prompt").inc(len(self.job.prompt_ids))
        m.tokens.labels(*labels, "completion").inc(self.completion_tokens)
        m.latency.labels(*labels).observe(time.monotonic() - self.start)
        if self.first is not None:
            m.ttft.labels(*labels).observe(self.first - self.start)

    @property
    def ttft(self) -> float | None:
        return None if self.first is None else self.first - self.start

    @property
    def latency(self) -> float:
        return time.monotonic() - self.start


async def complete(
    state: ServerState, job: Job, on_done: Any = None, request: Request | None = None
) -> JSONResponse | StreamingResponse:
    """Run a job; the adapter lease and the admission slot are held until the last byte."""
    stack = AsyncExitStack()
    try:
        target = await stack.enter_async_context(state.adapters.lease(job.model))
    except BaseException:
        await stack.aclose()
        raise
    headers = {"X-Adapter-Version": target.served_name, **job.extra_headers}
    tracker = _Tracker(state, job, target.served_name)
    engine_stream = state.engine.generate(job.id, job.prompt_ids, job.params, target.adapter)

    async def done(status: str) -> None:
        tracker.finish(status)
        if on_done is not None:
            on_done(job, target.served_name, tracker, status)
        await stack.aclose()

    if job.stream:
        return StreamingResponse(
            _sse(job, target.served_name, engine_stream, tracker, done, lambda: state.drain_expired),
            media_type="text/event-stream",
            headers=headers,
        )
    status = "error"
    try:
        body = await _until_disconnect(_collect(job, target.served_name, engine_stream, tracker), request)
        status = "ok"
    finally:
        await engine_stream.aclose()  # aborts the engine request if it is still running
        await done(status)
    return JSONResponse(body, headers=headers)


async def _until_disconnect(work: Any, request: Request | None, poll_s: float = 0.25) -> Any:
    """Await `work`, cancelling it when the client goes away (non-streaming requests)."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=poll_s)
            if done:
                return task.result()
            if request is not None and await request.is_disconnected():
                task.cancel()
                raise ClientGone("the client disconnected")
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task


async def _collect(
    job: Job, served: str, stream: AsyncGenerator[list[Delta], None], tracker: _Tracker
) -> dict[str, Any]:
    texts = [""] * job.params.n
    finish: list[str | None] = [None] * job.params.n
    lps: list[list[TokenLogprob] | None] = [None] * job.params.n
    async for deltas in stream:
        tracker.saw(deltas)
        for d in deltas:
            texts[d.index] += d.text
            finish[d.index] = d.finish_reason or finish[d.index]
            if d.logprobs is not None:
                lps[d.index] = (lps[d.index] or []) + d.logprobs
    base = {"id": job.id, "created": now(), "model": served, "usage": tracker.usage()}
    if job.chat:
        choices = [
            {
                "index": i,
                "message": {"role": "assistant", "content": texts[i]},
                "logprobs": _chat_logprobs(lps[i]),
                "finish_reason": finish[i] or "stop",
            }
            for i in range(job.params.n)
        ]
        return {**base, "object": "chat.completion", "choices": choices}
    choices = [
        {
            "index": i,
            "text": texts[i],
            "logprobs": _text_logprobs(lps[i], 0),
            "finish_reason": finish[i] or "stop",
        }
        for i in range(job.params.n)
    ]
    return {**base, "object": "text_completion", "choices": choices}


def _event(data: dict[str, Any] | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


async def _sse(
    job: Job,
    served: str,
    stream: AsyncGenerator[list[Delta], None],
    tracker: _Tracker,
    done: Any,
    expired: Any,
) -> AsyncIterator[str]:
    created = now()
    obj = "chat.completion.chunk" if job.chat else "text_completion"
    usage_field = {"usage": None} if job.include_usage else {}

    def chunk(choices: list[dict[str, Any]]) -> str:
        return _event(
            {
                "id": job.id,
                "object": obj,
                "created": created,
                "model": served,
                "choices": choices,
                **usage_field,
            }
        )

    status = "error"
    try:
        if job.chat:
            yield chunk(
                [
                    {
                        "index": i,
                        "delta": {"role": "assistant", "content": ""},
                        "logprobs": None,
                        "finish_reason": None,
                    }
                    for i in range(job.params.n)
                ]
            )
        offsets = [0] * job.params.n
        async for deltas in stream:
            if expired():
                raise UnavailableError("the server is shutting down: the drain timeout ended this stream")
            tracker.saw(deltas)
            out = []
            for d in deltas:
                if not d.text and d.finish_reason is None and not d.logprobs:
                    continue
                if job.chat:
                    out.append(
                        {
                            "index": d.index,
                            "delta": {"content": d.text} if d.text else {},
                            "logprobs": _chat_logprobs(d.logprobs),
                            "finish_reason": d.finish_reason,
                        }
                    )
                else:
                    out.append(
                        {
                            "index": d.index,
                            "text": d.text,
                            "logprobs": _text_logprobs(d.logprobs, offsets[d.index]),
                            "finish_reason": d.finish_reason,
                        }
                    )
                offsets[d.index] += len(d.text)
            if out:
                yield chunk(out)
        if job.include_usage:
            yield _event(
                {
                    "id": job.id,
                    "object": obj,
                    "created": created,
                    "model": served,
                    "choices": [],
                    "usage": tracker.usage(),
                }
            )
        status = "ok"
    except ServingError as exc:
        status = exc.type
        yield _event(exc.envelope())
    except Exception as exc:  # an engine failure mid-stream still ends the stream cleanly
        yield _event(
            {
                "error": {
                    "message": f"generation failed: {exc}",
                    "type": "server_error",
                    "param": None,
                    "code": None,
                }
            }
        )
    finally:
        await stream.aclose()  # aborts the engine request when the client went away
        await done(status)
    yield _event("[DONE]")
