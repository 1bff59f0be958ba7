"""The rollout controller: judge each step on its evidence, then advance, promote, pause or roll back.

`decide` is pure (a spec, a step, the evidence: a Decision). `tick` is one round of the controller:
take the lease (only the holder acts), then for every rollout due, read the evidence since its step
began, decide, and apply the decision through `RolloutStore.transition` (one conditional
transaction: a re-run tick, or a controller with a stale view, changes nothing). It runs inside
`platform serve` (`run_controller`, a task of the lifespan) and in `platform rollout watch`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from registry import rollouts as ro
from registry.adapter import validate_adapter
from registry.errors import InvalidAdapterError, RegistryError
from registry.refs import parse_ref
from registry.rollouts import Rollout, RolloutSpec
from serving.experiments.gates import (
    FEEDBACK_GATES,
    Gate,
    GateError,
    GateResult,
    Sample,
    evaluate,
    gate_set,
)

if TYPE_CHECKING:
    from registry.store import Registry
    from serving.state import ServerState

log = logging.getLogger("lora_platform.rollout")

LEASE_TTL_S = 3.0
"""A controller that stops renewing loses the lease after this long; another one takes over."""
TICK_S = 1.0


@dataclass(frozen=True)
class Decision:
    kind: str
    """pass | fail | wait | pause"""
    reason: str
    numbers: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Evidence:
    """The evidence of one step: each variant's request rows and the feedback on them."""

    baseline: Sample
    candidate: Sample
    elapsed_s: float
    """Seconds since the step began."""


def decide(spec: RolloutSpec, step: int, evidence: Evidence, shadow: bool = False) -> Decision:
    """Judge step `step` of a rollout (or its shadow phase, `shadow`) on `evidence`: any gate
    failing fails it; too few requests or an inconclusive gate waits (and pauses after
    `max_wait_s`); else it passes. Feedback gates with fewer than `min_feedback` events per
    variant are not judged and do not hold the step, unless no other gate is on."""
    base, cand = evidence.baseline, evidence.candidate
    where = "shadow phase" if shadow else f"step {spec.steps[step]:g}%"
    numbers: dict[str, Any] = {
        "phase": "shadow" if shadow else "steps",
        "weight": 0.0 if shadow else spec.steps[step],
        "baseline": base.numbers(),
        "candidate": cand.numbers(),
    }
    short = min(base.requests, cand.requests) < spec.min_requests
    results: list[GateResult] = []
    if not short:
        gates = [g for g in gates_of(spec) if not (shadow and g.name in FEEDBACK_GATES)]
        results = [evaluate(g, base, cand, spec.min_feedback) for g in gates]
        numbers["gates"] = {
            r.gate: {"outcome": r.outcome, "value": r.value, "limit": r.limit, "p": r.p_value, "note": r.note}
            for r in results
        }
    failed = [r for r in results if r.outcome == "fail"]
    if failed:
        return Decision("fail", f"{where}: gate failed: " + "; ".join(r.describe() for r in failed), numbers)
    if short:
        why = (
            f"inconclusive: {base.requests} baseline and {cand.requests} candidate requests, "
            f"need {spec.min_requests} each"
        )
    else:
        judged = [r for r in results if r.gate not in FEEDBACK_GATES and r.outcome != "skipped"]
        holding = ("inconclusive", "little-feedback") if not judged else ("inconclusive",)
        open_gates = [r for r in results if r.outcome in holding]
        if not open_gates:
            passed = ", ".join(r.gate for r in results if r.outcome == "pass")
            unjudged = [r.describe() for r in results if r.outcome == "little-feedback"]
            later = f"; not judged: {'; '.join(unjudged)}" if unjudged else ""
            return Decision("pass", f"{where} passed: {passed}{later}", numbers)
        why = "inconclusive: " + "; ".join(r.describe() for r in open_gates)
    if evidence.elapsed_s >= spec.max_wait_s:
        return Decision("pause", f"paused after {evidence.elapsed_s:.0f}s in the {where}: {why}", numbers)
    return Decision("wait", why, numbers)


def gates_of(spec: RolloutSpec) -> list[Gate]:
    return gate_set(spec.gates)


def evidence_for(reg: Registry, r: Rollout, now: float) -> Evidence:
    """Each variant's live requests since the step began (the baseline's since the rollout began
    when this step gives it no traffic), and the feedback on those requests. In the shadow phase
    the candidate's requests are the copies it answered (no user saw them, so no feedback)."""
    reqs, fb = reg.evidence().load(r.name)
    rows = [x for x in reqs if x["ts"] <= now]
    live = [x for x in rows if not x["shadow"]]
    shadow = r.phase == "shadow"
    base_since = r.step_started if shadow or r.spec.steps[r.step] < 100 else r.created
    base = [x for x in live if x["variant"] == r.spec.baseline and x["ts"] >= base_since]
    cand = [
        x
        for x in (rows if shadow else live)
        if x["variant"] == r.spec.candidate and bool(x["shadow"]) == shadow and x["ts"] >= r.step_started
    ]

    def feedback(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        ids = {x["id"] for x in rows}
        return [f for f in fb if f["completion_id"] in ids]

    return Evidence(Sample.of(base, feedback(base)), Sample.of(cand, feedback(cand)), now - r.step_started)


def controller_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def tick(reg: Registry, holder: str, now: float | None = None, ready: set[str] | None = None) -> list[str]:
    """One round of the controller; returns what it did (one line per action). `ready`: the
    candidates this process has loaded (None: no engine here, pre-flight is the registry's)."""
    now = time.time() if now is None else now
    active = [r for r in reg.rollouts().list_rollouts() if r.state in ("preflight", *ro.JUDGED)]
    if not active or not reg.rollouts().acquire_lease(holder, LEASE_TTL_S, now):
        return []  # nothing to do: no lease taken (no write every second on an idle catalog)
    done = []
    for r in active:
        try:
            line = _act(reg, r, holder, now, ready)
        except ro.StaleRollout:
            continue
        if line:
            done.append(line)
    return done


def _act(reg: Registry, r: Rollout, holder: str, now: float, ready: set[str] | None) -> str | None:
    if r.state == "preflight":
        if ready is not None and r.spec.candidate not in ready:
            return None
        if now - r.created < LEASE_TTL_S or reg.rollouts().replicas_not_ready(r.name, now):
            return None  # every live replica has announced itself by then, and must have it loaded
        return _preflight_ok(reg, r, holder, now)
    if r.state not in ro.JUDGED or now - r.evaluated < r.spec.interval_s:
        return None
    shadow = r.state == "shadow"
    d = decide(r.spec, r.step, evidence_for(reg, r, now), shadow=shadow)
    common: dict[str, Any] = {"now": now, "holder": holder, "numbers": d.numbers, "reason": d.reason}
    if d.kind == "wait":
        reg.rollouts().note(r, "wait", d.numbers, d.reason, holder, now)
        return None
    if d.kind == "pause":
        reg.rollouts().transition(r, state="paused", decision="pause", **common)
    elif d.kind == "fail":
        reg.rollouts().transition(
            r, state="rolled_back", route="hold_baseline", decision="rollback", **common
        )
    elif shadow:
        reg.rollouts().transition(r, state="running", step=0, route="weights", decision="shadow-ok", **common)
    elif r.final_step:
        reg.rollouts().transition(r, state="promoted", route="promote", decision="promote", **common)
    else:
        reg.rollouts().transition(
            r, state="running", step=r.step + 1, route="weights", decision="advance", **common
        )
    return f"{r.name}: {d.kind} - {d.reason}"


def _preflight_ok(reg: Registry, r: Rollout, holder: str, now: float) -> str:
    """The candidate is loaded: the shadow phase (copies of requests) or step 1 (user traffic)."""
    if r.spec.shadow_first:
        share = f"{r.spec.shadow_share:.0%}"
        reg.rollouts().transition(
            r,
            state="shadow",
            route="shadow",
            decision="preflight-ok",
            now=now,
            holder=holder,
            numbers={"phase": "shadow", "shadow_share": r.spec.shadow_share},
            reason=f"{r.spec.candidate} loaded; shadow phase: it answers copies of {share} of requests",
        )
        return f"{r.name}: pre-flight passed, shadow phase ({share} of requests copied)"
    reg.rollouts().transition(
        r,
        state="running",
        step=0,
        route="weights",
        decision="preflight-ok",
        now=now,
        holder=holder,
        reason=f"{r.spec.candidate} loaded; {r.spec.steps[0]:g}% of traffic",
    )
    return f"{r.name}: pre-flight passed, {r.spec.steps[0]:g}%"


# -- commands ------------------------------------------------------------------------------
def check(reg: Registry, name: str, spec: RolloutSpec) -> RolloutSpec:
    """The registry's pre-flight before `RolloutStore.create` (no traffic moves until a controller
    has loaded the candidate): both versions exist and belong to NAME, the candidate's files
    verify and it is a loadable LoRA on the baseline's base, steps and gates are valid. Returns the
    spec with both references pinned to versions (`name@N`)."""
    cand = reg.get(spec.candidate, verify_files=True)
    base = reg.get(spec.baseline, verify_files=False)
    if cand.name != name or base.name != name:
        raise RegistryError(
            f"rollout {name!r}: candidate {cand.ref} and baseline {base.ref} must both be versions of {name!r}"
        )
    if cand.ref == base.ref:
        raise RegistryError(f"rollout {name!r}: the candidate {cand.ref} is already the baseline")
    if cand.base_sha256 != base.base_sha256:
        raise RegistryError(
            f"rollout {name!r}: {cand.ref} was trained on {cand.base_model} ({cand.base_sha256[:12]}) but the "
            f"baseline {base.ref} on {base.base_model} ({base.base_sha256[:12]}): another base model"
        )
    try:
        validate_adapter(cand.path)
    except InvalidAdapterError as exc:
        raise RegistryError(
            f"rollout {name!r}: {cand.ref} is not a loadable LoRA adapter: {exc.message}"
        ) from exc
    steps = spec.steps
    if not steps or any(not 0 < s <= 100 for s in steps) or list(steps) != sorted(steps) or steps[-1] != 100:
        raise RegistryError(
            f"rollout {name!r}: steps must rise within (0, 100] and end at 100, got {list(steps)}"
        )
    try:
        gate_set(spec.gates)
    except GateError as exc:
        raise RegistryError(f"rollout {name!r}: {exc}") from exc
    if not 0 < spec.shadow_share <= 1:
        raise RegistryError(
            f"rollout {name!r}: the shadow share must be in (0, 1], got {spec.shadow_share:g}"
        )
    return replace(spec, candidate=cand.ref, baseline=base.ref)


def resolve_spec(name: str, candidate: str, baseline: str | None, alias: str, **kw: Any) -> RolloutSpec:
    """A spec from the command line's references (baseline defaults to NAME:ALIAS)."""
    parse_ref(candidate)
    return RolloutSpec(candidate=candidate, baseline=baseline or f"{name}:{alias}", alias=alias, **kw)


def pause(reg: Registry, name: str, reason: str = "paused by an operator") -> Rollout:
    r = reg.rollouts().get(name)
    if r.state not in ro.JUDGED:
        raise RegistryError(
            f"rollout {name!r} is {r.state}: only a running (or shadow) rollout can be paused"
        )
    return reg.rollouts().transition(r, state="paused", decision="pause", now=time.time(), reason=reason)


def resume(reg: Registry, name: str) -> Rollout:
    """Resume a paused rollout at its step (or in its shadow phase), with a fresh evidence window."""
    r = reg.rollouts().get(name)
    if r.state != "paused":
        raise RegistryError(f"rollout {name!r} is {r.state}: only a paused rollout can be resumed")
    state = "shadow" if r.phase == "shadow" else "running"
    return reg.rollouts().transition(r, state=state, decision="resume", now=time.time(), reason="resumed")


def abort(reg: Registry, name: str, reason: str = "aborted by an operator") -> Rollout:
    """Stop a rollout now: the candidate's weight goes to 0, the alias stays."""
    r = reg.rollouts().get(name)
    if r.state in ro.TERMINAL:
        raise RegistryError(f"rollout {name!r} already ended ({r.state})")
    return reg.rollouts().transition(
        r, state="aborted", route="hold_baseline", decision="abort", now=time.time(), reason=reason
    )


def fail_preflight(reg: Registry, r: Rollout, reason: str, holder: str) -> None:
    with contextlib.suppress(ro.StaleRollout):
        reg.rollouts().transition(
            r,
            state="failed",
            route="hold_baseline",
            decision="preflight-failed",
            now=time.time(),
            reason=reason,
            holder=holder,
        )


# -- inside `platform serve` ---------------------------------------------------------------
async def run_controller(state: ServerState, holder: str) -> None:
    """Every TICK_S: load the candidates of active rollouts (a load error fails the rollout in
    pre-flight; while one is in pre-flight, this replica announces itself and what it has loaded
    in the catalog, and pre-flight passes only when every live replica has), then tick. The lease is given back when the server stops."""
    try:
        while True:
            try:
                await controller_round(state, holder)
            except RegistryError as exc:
                log.warning("rollout controller: %s", exc)
            except Exception:  # nothing may stop the controller
                log.exception("rollout controller failed")
            await asyncio.sleep(TICK_S)
    finally:
        with contextlib.suppress(Exception):  # the catalog may be gone at shutdown
            await asyncio.shield(asyncio.to_thread(state.registry.rollouts().release_lease, holder))


async def controller_round(state: ServerState, holder: str) -> None:
    reg = state.registry
    active = [
        r
        for r in await asyncio.to_thread(reg.rollouts().list_rollouts)
        if r.state in ("preflight", *ro.JUDGED)
    ]
    ready: set[str] = set()
    preflight = [r for r in active if r.state == "preflight"]
    if preflight:  # this replica is alive: the candidate gets no traffic before it has it loaded
        await asyncio.to_thread(reg.rollouts().announce, holder, [], LEASE_TTL_S, time.time())
    for r in active:
        try:
            async with state.adapters.lease(r.spec.candidate):
                ready.add(r.spec.candidate)
        except Exception as exc:  # the candidate cannot load on this replica
            if r.state == "preflight":
                reason = f"pre-flight: {r.spec.candidate} cannot be loaded: {getattr(exc, 'message', exc)}"
                log.warning("rollout %s failed: %s", r.name, reason)
                await asyncio.to_thread(fail_preflight, reg, r, reason, holder)
    loaded = [r.name for r in preflight if r.spec.candidate in ready]
    if loaded:
        await asyncio.to_thread(reg.rollouts().announce, holder, loaded, LEASE_TTL_S, time.time())
    for line in await asyncio.to_thread(tick, reg, holder, time.time(), ready):
        log.info("rollout %s", line)
    await asyncio.to_thread(_export, state)


def _export(state: ServerState) -> None:
    """Rollout step, candidate weight and last decision per route, for /metrics."""
    m = state.metrics
    for r in state.registry.rollouts().list_rollouts():
        if r.state in ro.TERMINAL and r.updated < time.time() - 3600:
            continue
        m.rollout_step.labels(r.name).set(r.step + 1)
        m.rollout_weight.labels(r.name).set(r.weight / 100)
        for phase in PHASES:
            m.rollout_phase.labels(r.name, phase).set(1 if phase == r.phase else 0)
        last = state.registry.rollouts().last_decision(r.name) or r.state
        for d in DECISIONS:
            m.rollout_decision.labels(r.name, d).set(1 if d == last else 0)


DECISIONS = (
    "start",
    "preflight-ok",
    "preflight-failed",
    "wait",
    "shadow-ok",
    "advance",
    "pause",
    "resume",
    "promote",
    "rollback",
    "abort",
)

PHASES = ("preflight", "shadow", "steps", "ended")


def plot(r: Rollout, events: list[ro.Event], out: Path) -> Path:
    """Candidate weight, and the gated metrics of both variants, over the rollout's time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0 = events[0].ts if events else r.created
    ts = [e.ts - t0 for e in events]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.5), dpi=100)
    axes[0].step(ts, [e.weight for e in events], where="post")
    axes[0].set_title("candidate weight (%)")
    panels = (
        (axes[1], "error_rate", "thumbs_up_rate", "error / thumbs-up rate"),
        (axes[2], "latency_p95_s", "ttft_p95_s", "latency / TTFT p95 (s)"),
    )
    for ax, first, second, title in panels:
        for variant, style in (("baseline", "-"), ("candidate", "--")):
            for metric in (first, second):
                points = [
                    (t, (e.numbers.get(variant) or {}).get(metric)) for t, e in zip(ts, events, strict=True)
                ]
                points = [(t, v) for t, v in points if v is not None]
                if points:
                    ax.plot(*zip(*points, strict=True), style, marker=".", label=f"{variant} {metric}")
        ax.set_title(title)
        ax.legend(fontsize=7)
    for ax in axes:
        ax.set_xlabel("seconds")
    fig.suptitle(f"rollout {r.name}: {r.spec.baseline} -> {r.spec.candidate} ({r.state})")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out
