"""Running a job: admission, the adapter lease, the engine call, metrics, and the response.

The routes call `complete()`. A `Generation` owns the request's admission slot and adapter lease
(an in-flight request keeps its version) from `Generation.open()` to its one `close()`, and its
shadow copy's task (A/B routes), cancelled in `close()` unless the request was answered. A
non-streaming request closes it before answering; a streaming one hands it to its `EventStream`,
which closes it whatever happens to the response, even when the client is gone before the first
byte and the body is never started.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Coroutine, Mapping
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any, TypeVar

from fastapi import Request
from fastapi.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from serving import structured, tracing
from serving.ab import apply_route, record, start_shadow
from serving.adapters import Target
from serving.encoding import DONE, Collected, StreamEncoder, error_event
from serving.engine.base import Delta, EngineTimes
from serving.errors import (
    ClientGone,
    InternalError,
    ModelNotFoundError,
    ServiceUnavailableError,
    ServingError,
)
from serving.identity import bearer
from serving.jobs import Job, RequestBody, build_job
from serving.payloads import request_text
from serving.protocol import ChatCompletion, Completion, Usage
from serving.state import ServerState

if TYPE_CHECKING:
    from opentelemetry.trace import Span

log = logging.getLogger("lora_platform.serving")
T = TypeVar("T")


async def complete(state: ServerState, req: RequestBody, request: Request) -> Response:
    """Admit, build and run one completion request; JSON, or an SSE stream when it asks."""
    gen = await Generation.open(state, req, req.user or request.headers.get("x-user-id"), request.headers)
    if gen.job.stream:
        return EventStream(gen)
    try:
        body = await gen.body(request)
    finally:
        await gen.close()
    return Response(body.model_dump_json(), media_type="application/json", headers=gen.headers)


class Tracker:
    """Usage, timing and metrics of one job."""

    def __init__(
        self, state: ServerState, job: Job, served: str, adapter: bool = False, capture: bool = False
    ) -> None:
        self.state, self.job, self.served = state, job, served
        self.start = time.monotonic()
        self.first: float | None = None
        self.last: float | None = None
        self.times: EngineTimes | None = None
        """The engine's own timestamps, when it reports them."""
        self.completion_tokens = 0
        self.capture = capture
        """Whether choice 0's text and finish reason are kept (for payload logging)."""
        self._parts: list[str] = []
        self.finish_reason: str | None = None
        self.adapter = adapter
        """Whether an adapter serves it (then it is listed in `lora_requests_info`)."""
        if adapter:
            state.metrics.lora_info.admitted(served)

    def saw(self, deltas: list[Delta]) -> None:
        n = sum(len(d.token_ids) for d in deltas)
        if n:
            self.last = time.monotonic()
        if n and self.first is None:
            self.first = self.last
            if self.adapter:
                self.state.metrics.lora_info.first_token(self.served)
        self.completion_tokens += n
        self.times = next((d.times for d in deltas if d.times is not None), self.times)
        if self.capture:
            for d in deltas:
                if d.index == 0:
                    self._parts.append(d.text)
                    self.finish_reason = d.finish_reason or self.finish_reason

    @property
    def text(self) -> str | None:
        """Choice 0's text so far (None unless capturing)."""
        return "".join(self._parts) if self.capture else None

    def usage(self) -> Usage:
        p = len(self.job.prompt_ids)
        return Usage(
            prompt_tokens=p, completion_tokens=self.completion_tokens, total_tokens=p + self.completion_tokens
        )

    def finish(self, status: str) -> None:
        """Count the request. Errors are counted here only for streams (they fail after the 200);
        the HTTP error handler counts every error that becomes an error response."""
        m, labels = self.state.metrics, (self.served, self.job.route, self.job.variant)
        m.requests.labels(*labels, status).inc()
        if status != "ok" and self.job.stream:
            m.errors.labels(self.served, status).inc()
        m.tokens.labels(*labels, "prompt").inc(len(self.job.prompt_ids))
        m.tokens.labels(*labels, "completion").inc(self.completion_tokens)
        end = time.monotonic()
        m.latency.labels(*labels).observe(end - self.start)
        if self.first is not None:
            m.ttft.labels(*labels).observe(self.first - self.start)
            if self.completion_tokens > 1:
                m.tpot.labels(*labels).observe((end - self.first) / (self.completion_tokens - 1))
        if self.adapter:
            m.lora_info.finished(self.served, self.first is not None)

    @property
    def ttft(self) -> float | None:
        return None if self.first is None else self.first - self.start

    @property
    def latency(self) -> float:
        return time.monotonic() - self.start


class Generation:
    """One admitted request: holds its admission slot and adapter lease until `close()`."""

    def __init__(
        self,
        state: ServerState,
        job: Job,
        target: Target,
        held: AsyncExitStack,
        logged: str | None = None,
        span: Span | None = None,
    ) -> None:
        self.state, self.job, self.served = state, job, target.served_name
        self.logged = logged
        """The request as its payload row keeps it, when this job is logged (`--log-payloads`)."""
        self.span = span
        """The request's trace span (None while tracing is off); it ends in `close()`."""
        self.tracker = Tracker(
            state, job, self.served, adapter=target.adapter is not None, capture=logged is not None
        )
        self.status = "error"
        self._held = held
        self._engine = state.engine.generate(job.id, job.prompt_ids, job.params, target.adapter)
        self._closed = False
        self.shadow: asyncio.Task[None] | None = None
        """The shadow copy's task, when this request is copied to a shadow version."""

    @classmethod
    async def open(
        cls,
        state: ServerState,
        req: RequestBody,
        sticky_key: str | None,
        headers: Mapping[str, str] | None = None,
    ) -> Generation:
        """Take a slot (or fail fast with 429), build the job (tokenizing in a worker thread: a
        long prompt does not hold the event loop), resolve and lease its adapter, start its shadow
        copy. The request's trace (when tracing is on) continues the caller's `traceparent` header."""
        span = tracing.start_request(headers or {}, {"gen_ai.request.model": req.model})
        held = AsyncExitStack()
        try:
            with tracing.active(span):
                held.enter_context(state.admission())
                job = await asyncio.to_thread(build_job, state, req)
                job.key_hash = state.hasher.api_key(bearer(headers or {}))
                target, shadow = await _lease(state, job, sticky_key, held)
                job.params = await asyncio.to_thread(
                    structured.constrain, state, req, job.params, target, job.tools
                )
            logged = None
            if state.payloads is not None and state.payloads.name_of(job) is not None:
                logged = request_text(req)
        except BaseException as exc:
            tracing.end(span, {}, str(getattr(exc, "type", type(exc).__name__)))
            await held.aclose()
            raise
        tracing.annotate(span, _span_attributes(job, target.served_name))
        gen = cls(state, job, target, held, logged, span)
        if shadow is not None:
            gen.shadow = start_shadow(state, job, shadow)
        return gen

    @property
    def headers(self) -> dict[str, str]:
        return {"X-Adapter-Version": self.served, **self.job.extra_headers}

    async def close(self) -> None:
        """Abort the engine request if it still runs, count and record the request, give back
        the lease and the slot. Runs once; later calls do nothing."""
        if self._closed:
            return
        self._closed = True
        if self.shadow is not None and self.status != "ok":
            self.shadow.cancel()  # nobody got an answer to compare the copy with
        try:
            await self._engine.aclose()
        finally:
            self.tracker.finish(self.status)
            record(self.state, self.job, self.served, self.tracker, self.status)
            self._log_payload()
            _trace_end(self.span, self.tracker, self.status)
            await self._held.aclose()

    def _log_payload(self) -> None:
        """Enqueue the payload row of a logged job; a failure is logged, never the request's."""
        if self.logged is None or self.state.payloads is None:
            return
        try:
            self.state.payloads.record(self.job, self.served, self.tracker, self.status, self.logged)
        except Exception:
            log.exception("logging the payload of %s failed", self.job.id)

    async def body(self, request: Request) -> ChatCompletion | Completion:
        """Run to the end (cancelled when the client goes away) and build the JSON body."""
        collected = Collected(self.job.params.n)

        async def collect() -> None:
            async for deltas in self._engine:
                self.tracker.saw(deltas)
                collected.add(deltas)

        await _until_disconnect(collect(), request)
        self.status = "ok"
        return collected.body(self.job, self.served, self.tracker.usage())

    async def events(self) -> AsyncGenerator[str, None]:
        """The SSE events; a failure mid-stream ends the stream with an error event. The job is
        closed before `[DONE]`, so a client that read `[DONE]` sees its metrics and evidence."""
        try:
            async for chunk in self._chunks(StreamEncoder(self.job, self.served)):
                yield chunk
            self.status = "ok"
        except ServingError as exc:
            self.status = exc.type
            yield error_event(exc.envelope())
        except Exception:  # an engine failure mid-stream still ends the stream cleanly
            log.exception("generation %s failed mid-stream", self.job.id)
            failed = InternalError("generation failed: internal error (the server log has the details)")
            self.status = failed.type
            yield error_event(failed.envelope())
        await self.close()
        yield DONE

    async def _chunks(self, encoder: StreamEncoder) -> AsyncIterator[str]:
        first = encoder.start()
        if first is not None:
            yield first
        async for deltas in self._engine:
            if self.state.drain_expired:
                raise ServiceUnavailableError(
                    "the server is shutting down: the drain timeout ended this stream"
                )
            self.tracker.saw(deltas)
            chunk = encoder.deltas(deltas)
            if chunk is not None:
                yield chunk
        last = encoder.usage(self.tracker.usage())
        if last is not None:
            yield last


class EventStream(StreamingResponse):
    """The SSE response of a streaming job. It owns the job's `Generation` and closes it however
    the response ends: finished, failed, client gone mid-stream or before the first byte."""

    def __init__(self, gen: Generation) -> None:
        self.generation = gen
        self._events = gen.events()
        super().__init__(self._events, media_type="text/event-stream", headers=gen.headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._events.aclose()  # a stream left at a `yield` (client gone) ends here
            await self.generation.close()


async def _lease(
    state: ServerState, job: Job, sticky_key: str | None, held: AsyncExitStack
) -> tuple[Target, str | None]:
    """Route the job (A/B) and lease its adapter; the shadow version to copy it to, if any. A
    model that does not resolve gets one more try when the registry changed since the last poll:
    a route or version made a moment ago."""
    try:
        return await _lease_once(state, job, sticky_key, held)
    except ModelNotFoundError:
        if job.route or not await state.refresh():
            raise
    return await _lease_once(state, job, sticky_key, held)


async def _lease_once(
    state: ServerState, job: Job, sticky_key: str | None, held: AsyncExitStack
) -> tuple[Target, str | None]:
    with tracing.span("resolve", {"gen_ai.request.model": job.model}) as span:
        shadow = apply_route(state, job, sticky_key)
        found = await state.adapters.resolve(job.model)  # the lease finds it cached
        version = state.served_base if found is None else f"{found[0]}@{found[1]}"
        tracing.annotate(span, _span_attributes(job, version))
    return await held.enter_async_context(state.adapters.lease(job.model)), shadow


def _span_attributes(job: Job, version: str) -> dict[str, str]:
    routed = {"lora.route": job.route, "lora.variant": job.variant} if job.route else {}
    return {"lora.version": version, "gen_ai.request.id": job.id, **routed}


def _trace_end(span: Span | None, tracker: Tracker, status: str) -> None:
    """The engine's spans (`queue`, `prefill`, `decode`) under the request's, then its end."""
    if span is None:
        return
    t, first, last = tracker.times, tracker.first, tracker.last
    if t is not None:
        phases = [
            ("queue", t.queued, t.scheduled),
            ("prefill", t.scheduled, t.first_token),
            ("decode", t.first_token, t.last_token),
        ]
        tracing.past(span, phases)
    elif first is not None and last is not None:  # no engine stamps: from the engine call
        tracing.past(span, [("prefill", tracker.start, first), ("decode", first, last)])
    usage = tracker.usage()
    attributes: tracing.Attributes = {
        "gen_ai.usage.prompt_tokens": usage.prompt_tokens,
        "gen_ai.usage.completion_tokens": usage.completion_tokens,
        "lora.status": status,
    }
    tracing.end(span, attributes, None if status == "ok" else status)


async def _until_disconnect(work: Coroutine[Any, Any, T], request: Request, poll_s: float = 0.25) -> T:
    """Await `work`, cancelling it when the client goes away (non-streaming requests)."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=poll_s)
            if done:
                return task.result()
            if await request.is_disconnected():
                task.cancel()
                raise ClientGone("the client disconnected")
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
