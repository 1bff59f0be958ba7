"""A/B routing on the request path: pick the variant, log the evidence, run the shadow copy.

A shadow copy is engine work like any request: it takes a request slot (`--max-queue`) for as
long as it runs, and is skipped when none is free (the real request is never refused for it).
The request's `Generation` owns the copy's task and cancels it when the request ends without an
answer (client gone, failure): a copy nobody's answer is compared with is not worth running.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING

from registry.evidence_store import RequestRecord
from serving.jobs import Job
from serving.routing import choose, shadow_sampled
from serving.state import ServerState

if TYPE_CHECKING:
    from serving.generation import Tracker

log = logging.getLogger("lora_platform.ab")


def apply_route(state: ServerState, job: Job, sticky_key: str | None) -> str | None:
    """When `job.model` names an A/B route, point the job at the chosen variant. Returns the
    shadow version when this request is to be copied to one (`start_shadow`), else None."""
    route = state.routes.get(job.model)
    if route is None or "@" in job.model or ":" in job.model:
        return None
    variant = choose(route, sticky_key)
    job.route, job.variant, job.model = route.name, variant.ref, variant.ref
    job.user_hash = state.hasher.user(sticky_key)
    return route.shadow if route.shadow and shadow_sampled(route, job.id) else None


def start_shadow(state: ServerState, job: Job, shadow_ref: str) -> asyncio.Task[None]:
    """Run the shadow copy of `job` beside it; the caller cancels the task when its request ends
    without an answer. The server's shutdown cancels it too."""
    task = asyncio.create_task(_slotted_shadow(state, job, shadow_ref))
    state.tasks[:] = [t for t in state.tasks if not t.done()]
    state.tasks.append(task)
    return task


async def _slotted_shadow(state: ServerState, job: Job, shadow_ref: str) -> None:
    """The copy, holding a request slot while it runs; skipped when no slot is free."""
    with state.spare_slot() as held:
        if not held:
            log.debug("shadow copy of %s skipped: no free request slot", job.id)
            return
        await _shadow(state, job, shadow_ref)


def record(state: ServerState, job: Job, served: str, tracker: Tracker, status: str) -> None:
    """One evidence row per routed request (enqueued, written off the hot path)."""
    if job.route and state.evidence is not None:
        state.evidence.record(
            RequestRecord(
                job.id,
                time.time(),
                job.route,
                served,
                job.user_hash,
                tracker.latency,
                tracker.ttft,
                len(job.prompt_ids),
                tracker.completion_tokens,
                status,
                key_hash=job.key_hash,
            )
        )


async def _shadow(state: ServerState, job: Job, shadow_ref: str) -> None:
    """Run a copy of the request on the shadow version; log its answer, never return it."""
    start = time.monotonic()
    first: float | None = None
    text, tokens, status = "", 0, "error"
    try:
        async with (
            state.adapters.lease(shadow_ref) as target,
            contextlib.aclosing(
                state.engine.generate(f"{job.id}-shadow", job.prompt_ids, job.params, target.adapter)
            ) as stream,
        ):
            async for deltas in stream:
                first = first or time.monotonic()
                text += "".join(d.text for d in deltas if d.index == 0)
                tokens += sum(len(d.token_ids) for d in deltas)
            status = "ok"
            served = target.served_name
    except Exception as exc:  # a failing shadow must never affect the real request
        log.warning("shadow request on %s failed: %s", shadow_ref, exc)
        served = shadow_ref
    if state.evidence is not None:
        state.evidence.record(
            RequestRecord(
                f"{job.id}-shadow",
                time.time(),
                job.route,
                served,
                job.user_hash,
                time.monotonic() - start,
                None if first is None else first - start,
                len(job.prompt_ids),
                tokens,
                status,
                1,
                text,
                key_hash=job.key_hash,
            )
        )
