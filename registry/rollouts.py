"""Progressive rollouts in the catalog: their state, the audit trail, and controller leases.

A rollout moves one adapter's traffic (the A/B route named after the adapter) from a baseline
version to a candidate in steps. This module owns the rows and the transitions; the decisions
(statistics) and the loop that makes them live in `serving/experiments/rollout.py`.

Every transition is one catalog transaction that checks the rollout is still where the caller
saw it (state, step and step start), then changes the rollout row, the route (or the alias) and
appends an event; so a controller re-running a tick after a crash, or a second controller with a
stale view, changes nothing. Leases (`acquire_lease`) let exactly one controller act at a time.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import sqlalchemy as sa

from registry import db as t
from registry.db import CatalogDB
from registry.errors import ConflictError, NotFoundError, RegistryError
from registry.refs import check_name
from registry.routes import Route, Variant
from registry.sql_catalog import SqlCatalog, SqlWrite

ACTIVE = ("preflight", "shadow", "running", "paused")
JUDGED = ("shadow", "running")
"""States in which the controller judges the evidence every interval."""
TERMINAL = ("promoted", "rolled_back", "aborted", "failed")
OUTCOME_TAGS = {
    "promoted": "rollout:promoted",
    "rolled_back": "rollout:rolled-back",
    "failed": "rollout:failed",
}
CONTROLLER_LEASE = "rollout-controller"
RouteAction = Literal["weights", "shadow", "promote", "hold_baseline", "none"]


@dataclass(frozen=True)
class RolloutSpec:
    """What `platform rollout start` was told (references already pinned to versions)."""

    candidate: str
    """`name@N`"""
    baseline: str
    """`name@N` (resolved from `name:alias` when the rollout started)"""
    alias: str = "prod"
    steps: tuple[float, ...] = (5.0, 25.0, 50.0, 100.0)
    """Candidate weights in percent, the last one 100."""
    interval_s: float = 60.0
    min_requests: int = 50
    """Requests per variant before a step (or the shadow phase) is judged."""
    min_feedback: int = 20
    """Feedback events per variant before the feedback gates (thumbs_up, score) are judged; with
    fewer they do not hold the step (unless no other gate is on)."""
    max_wait_s: float = 600.0
    """How long a step may stay inconclusive before the rollout pauses."""
    gates: dict[str, str] = field(default_factory=dict)
    """Gate overrides, name -> expression (`error_rate` -> `<=+1pt`)."""
    shadow_first: bool = False
    """Before step 1, a shadow phase: the candidate answers copies of requests (never returned)
    and is judged on errors, latency, TTFT, empty rate and length drift."""
    shadow_share: float = 1.0
    """The share of `model=NAME` requests copied to the candidate in the shadow phase, 0-1."""

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "steps": list(self.steps)})

    @classmethod
    def from_json(cls, text: str) -> RolloutSpec:
        d = json.loads(text)
        return cls(**{**d, "steps": tuple(float(s) for s in d["steps"])})


@dataclass(frozen=True)
class Rollout:
    name: str
    spec: RolloutSpec
    state: str
    step: int
    """Index into `spec.steps`; -1 before the first step (pre-flight, shadow phase)."""
    step_started: float
    evaluated: float
    created: float
    updated: float
    reason: str | None

    @property
    def weight(self) -> float:
        """The candidate's share of user traffic now, in percent (0 in the shadow phase)."""
        return self.spec.steps[self.step] if self.state in ("running", "paused") and self.step >= 0 else 0.0

    @property
    def phase(self) -> str:
        """preflight | shadow | steps | ended (a paused rollout keeps the phase it paused in)."""
        if self.state in TERMINAL:
            return "ended"
        if self.state == "preflight":
            return "preflight"
        return "shadow" if self.step < 0 else "steps"

    @property
    def final_step(self) -> bool:
        return self.step == len(self.spec.steps) - 1


@dataclass(frozen=True)
class Event:
    ts: float
    rollout: str
    step: int
    weight: float
    decision: str
    numbers: dict[str, Any]
    reason: str | None
    holder: str | None


class StaleRollout(RegistryError):
    """The rollout changed since it was read (another controller acted, or a command did)."""


def _row(r: Any) -> Rollout:
    return Rollout(
        r.name,
        RolloutSpec.from_json(r.spec),
        r.state,
        int(r.step),
        float(r.step_started),
        float(r.evaluated),
        float(r.created),
        float(r.updated),
        r.reason,
    )


def _held_by_finished(route: Route, old: Any) -> bool:
    """Whether `route` is still the hold a finished rollout left (100% baseline, candidate at 0,
    unchanged since): the next rollout takes it over. A route a person set up is not."""
    spec = RolloutSpec.from_json(old.spec)
    hold = [(spec.baseline, 100.0), (spec.candidate, 0.0)]
    return (
        old.state in TERMINAL
        and [(v.ref, v.weight) for v in route.variants] == hold
        and route.shadow is None
        and route.updated <= old.updated
    )


def _change_route(tx: SqlWrite, r: Rollout, action: RouteAction, weight: float, now: float) -> None:
    if action == "none":
        return
    if action == "shadow":  # users keep the baseline; the candidate answers copies
        old = tx.route(r.name)
        if old is None:
            raise StaleRollout(f"the route of rollout {r.name!r} was removed; nothing done")
        variants = (Variant(r.spec.baseline, 100.0), Variant(r.spec.candidate, 0.0))
        tx.put_route(
            Route(r.name, variants, r.spec.candidate, r.spec.shadow_share, old.created, now, old.history)
        )
        return
    if action == "promote":
        name, version = r.spec.candidate.split("@")
        tx.set_alias(name, r.spec.alias, int(version))
        tx.delete_route(r.name)
        return
    old = tx.route(r.name)
    if old is None:
        raise StaleRollout(f"the route of rollout {r.name!r} was removed; nothing done")
    variants = (Variant(r.spec.baseline, 100.0 - weight), Variant(r.spec.candidate, weight))
    history = (*old.history, {"variants": [asdict(v) for v in old.variants], "until": now})
    tx.put_route(Route(r.name, variants, None, 0.0, old.created, now, history))


def _event(
    conn: sa.Connection,
    name: str,
    step: int,
    weight: float,
    decision: str,
    numbers: dict[str, Any],
    reason: str | None,
    holder: str | None,
    now: float,
) -> None:
    conn.execute(
        sa.insert(t.rollout_events).values(
            ts=now,
            rollout=name,
            step=step,
            weight=weight,
            decision=decision,
            numbers=json.dumps(numbers, default=str),
            reason=reason,
            holder=holder,
        )
    )


class RolloutStore:
    """The rollouts, their events and the controller leases: a small store over the catalog's
    engine, like EvidenceStore and PayloadStore (`Registry.rollouts()` hands one out). The route
    and alias a transition changes are written through the catalog's own write (SqlWrite), in the
    same transaction."""

    def __init__(self, db: CatalogDB) -> None:
        self.db = db
        self.catalog = SqlCatalog(db)

    def get(self, name: str) -> Rollout:
        with self.db.read() as conn:
            row = conn.execute(sa.select(t.rollouts).where(t.rollouts.c.name == name)).first()
        if row is None:
            raise NotFoundError(f"no rollout named {name!r}")
        return _row(row)

    def list_rollouts(self) -> list[Rollout]:
        with self.db.read() as conn:
            return [_row(r) for r in conn.execute(sa.select(t.rollouts).order_by(t.rollouts.c.name))]

    def outcomes_for(self, ref: str) -> list[dict[str, Any]]:
        """How the rollouts that had `ref` (`name@N`) as their candidate ended: for its card and
        `registry show`. The rollout's row keeps the reason until a new rollout of that name starts;
        the outcome tag on the version stays after that."""
        out = [
            {
                "rollout": r.name,
                "outcome": r.state,
                "baseline": r.spec.baseline,
                "ended": r.updated,
                "reason": r.reason,
            }
            for r in self.list_rollouts()
            if r.spec.candidate == ref and r.state in TERMINAL
        ]
        name, version = ref.split("@")
        row = self.catalog.version(name, int(version))
        tags = row.tags if row is not None else ()
        for state, tag in OUTCOME_TAGS.items():
            if tag in tags and not any(o["outcome"] == state for o in out):
                out.append(
                    {"rollout": name, "outcome": state, "baseline": None, "ended": None, "reason": None}
                )
        return out

    def events(self, name: str) -> list[Event]:
        """The decisions of the rollout `name` (its latest start), oldest first."""
        r = self.get(name)
        e = t.rollout_events.c
        query = sa.select(t.rollout_events).where(e.rollout == name, e.ts >= r.created).order_by(e.ts, e.id)
        with self.db.read() as conn:
            return [
                Event(
                    x.ts, x.rollout, x.step, x.weight, x.decision, json.loads(x.numbers), x.reason, x.holder
                )
                for x in conn.execute(query)
            ]

    def create(self, name: str, spec: RolloutSpec, now: float | None = None) -> Rollout:
        """Insert the rollout in pre-flight, with its route at 100% baseline (the candidate gets no
        traffic until a controller has loaded it). Refused while a rollout or a route of that name runs."""
        check_name(name, "rollout name")
        now = time.time() if now is None else now
        route = Route(
            name, (Variant(spec.baseline, 100.0), Variant(spec.candidate, 0.0)), created=now, updated=now
        )
        values = {
            "name": name,
            "spec": spec.to_json(),
            "state": "preflight",
            "step": -1,
            "step_started": now,
            "evaluated": now,
            "created": now,
            "updated": now,
            "reason": None,
        }
        with self.db.write() as conn:
            tx = SqlWrite(self.db, conn)
            old = conn.execute(
                sa.select(t.rollouts.c.state, t.rollouts.c.spec, t.rollouts.c.updated).where(
                    t.rollouts.c.name == name
                )
            ).first()
            if old is not None and old.state in ACTIVE:
                raise ConflictError(
                    f"rollout {name!r} is {old.state}: abort it first (`platform rollout abort {name}`)"
                )
            held = tx.route(name)
            if held is not None and not (old is not None and _held_by_finished(held, old)):
                raise ConflictError(
                    f"an A/B route named {name!r} exists: a rollout owns that route; stop it first "
                    f"(`platform ab stop {name}`)"
                )
            self.db.upsert(conn, t.rollouts, values, ["name"])
            tx.put_route(route)
            _event(conn, name, -1, 0.0, "start", {"spec": json.loads(spec.to_json())}, None, None, now)
        return self.get(name)

    def transition(
        self,
        seen: Rollout,
        *,
        state: str,
        decision: str,
        now: float,
        step: int | None = None,
        route: RouteAction = "none",
        numbers: dict[str, Any] | None = None,
        reason: str | None = None,
        holder: str | None = None,
    ) -> Rollout:
        """Move `seen` to `state` (and `step`), change its route, append an event: one transaction,
        applied only if the rollout is still as `seen` (else StaleRollout, nothing changed)."""
        new_step = seen.step if step is None else step
        ro = t.rollouts.c
        with self.db.write() as conn:
            done = conn.execute(
                sa.update(t.rollouts)
                .where(
                    ro.name == seen.name,
                    ro.state == seen.state,
                    ro.step == seen.step,
                    ro.step_started == seen.step_started,
                )
                .values(
                    state=state,
                    step=new_step,
                    step_started=now if new_step != seen.step or state != seen.state else seen.step_started,
                    evaluated=now,
                    updated=now,
                    reason=reason,
                )
            )
            if done.rowcount != 1:
                raise StaleRollout(f"rollout {seen.name!r} changed meanwhile; nothing done")
            weight = seen.spec.steps[new_step] if new_step >= 0 and state in ("running", "paused") else 0.0
            if route == "promote":
                weight = 100.0
            _change_route(SqlWrite(self.db, conn), seen, route, weight, now)
            if state in OUTCOME_TAGS:
                cname, cversion = seen.spec.candidate.split("@")
                SqlWrite(self.db, conn).set_tag(cname, int(cversion), OUTCOME_TAGS[state], present=True)
            _event(conn, seen.name, new_step, weight, decision, numbers or {}, reason, holder, now)
        return self.get(seen.name)

    def note(
        self,
        seen: Rollout,
        decision: str,
        numbers: dict[str, Any],
        reason: str | None,
        holder: str | None,
        now: float,
    ) -> bool:
        """Record an evaluation that changes nothing (wait): the event, and when it was made.
        Does not move the change counter (servers have nothing to pick up)."""
        ro = t.rollouts.c
        with self.db.write(bump=False) as conn:
            done = conn.execute(
                sa.update(t.rollouts)
                .where(ro.name == seen.name, ro.state == seen.state, ro.evaluated == seen.evaluated)
                .values(evaluated=now)
            )
            if done.rowcount != 1:
                return False
            _event(conn, seen.name, seen.step, seen.weight, decision, numbers, reason, holder, now)
        return True

    def acquire_lease(self, holder: str, ttl_s: float, now: float, name: str = CONTROLLER_LEASE) -> bool:
        """Take or renew the lease `name` for `ttl_s` seconds: True when `holder` has it now.

        One conditional upsert: it succeeds when the lease is free, expired, or already ours; the
        database's row lock (PostgreSQL) or write lock (SQLite) makes two takers see one winner."""
        le = t.leases.c
        stmt = self.db.insert(t.leases).values(name=name, holder=holder, expires=now + ttl_s)
        stmt = stmt.on_conflict_do_update(
            index_elements=["name"],
            set_={"holder": holder, "expires": now + ttl_s},
            where=sa.or_(le.holder == holder, le.expires < now),
        )
        with self.db.write(bump=False) as conn:
            conn.execute(stmt)
            current = conn.execute(sa.select(le.holder).where(le.name == name)).scalar()
        return bool(current == holder)

    def release_lease(self, holder: str, name: str = CONTROLLER_LEASE) -> None:
        """Give the lease up (a clean shutdown), so another controller need not wait for it to expire."""
        le = t.leases.c
        with self.db.write(bump=False) as conn:
            conn.execute(sa.delete(t.leases).where(le.name == name, le.holder == holder))

    def announce(self, holder: str, ready: list[str], ttl_s: float, now: float) -> None:
        """A serving replica says it is alive (`replica:HOLDER`) and, for each rollout in `ready`,
        that it has loaded its candidate (`ready:ROLLOUT:HOLDER`); both for `ttl_s` seconds."""
        names = [f"replica:{holder}", *(f"ready:{name}:{holder}" for name in ready)]
        with self.db.write(bump=False) as conn:
            for name in names:
                self.db.upsert(
                    conn, t.leases, {"name": name, "holder": holder, "expires": now + ttl_s}, ["name"]
                )

    def replicas_not_ready(self, name: str, now: float) -> list[str]:
        """The live serving replicas (announced, not expired) that have not loaded the candidate of
        rollout `name`."""
        le = t.leases.c
        live = sa.select(le.name, le.holder).where(le.expires >= now)
        with self.db.read() as conn:
            rows = conn.execute(live).all()
        replicas = {h for n, h in rows if n.startswith("replica:")}
        ready = {h for n, h in rows if n.startswith(f"ready:{name}:")}
        return sorted(replicas - ready)

    def lease_holder(self, now: float, name: str = CONTROLLER_LEASE) -> str | None:
        le = t.leases.c
        with self.db.read() as conn:
            row = conn.execute(sa.select(le.holder, le.expires).where(le.name == name)).first()
        return row.holder if row is not None and row.expires >= now else None

    def last_decision(self, name: str) -> str | None:
        e = t.rollout_events.c
        query = sa.select(e.decision).where(e.rollout == name).order_by(e.ts.desc(), e.id.desc()).limit(1)
        with self.db.read() as conn:
            found = conn.execute(query).scalar()
        return None if found is None else str(found)
