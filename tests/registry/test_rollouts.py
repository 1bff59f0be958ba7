"""Rollout state in the catalog: conditional transitions (no double step) and the controller lease."""

from __future__ import annotations

import pytest

from registry import rollouts as ro
from registry.routes import get_route
from registry.store import Registry


def test_a_stale_or_repeated_transition_changes_nothing(registry_location: str) -> None:
    reg = Registry(registry_location)
    spec = ro.RolloutSpec("bot@2", "bot@1", steps=(5.0, 50.0, 100.0))
    r = ro.create(reg, "bot", spec, now=100.0)
    assert [(v.ref, v.weight) for v in get_route(reg, "bot").variants] == [("bot@1", 100.0), ("bot@2", 0.0)]
    running = ro.transition(
        reg, r, state="running", step=0, route="weights", decision="preflight-ok", now=101.0
    )
    advanced = ro.transition(
        reg, running, state="running", step=1, route="weights", decision="advance", now=102.0
    )
    with pytest.raises(ro.StaleRollout):  # the same tick again (a restart, or a second controller)
        ro.transition(reg, running, state="running", step=1, route="weights", decision="advance", now=103.0)
    assert ro.get(reg, "bot").step == 1 == advanced.step
    assert [(v.ref, v.weight) for v in get_route(reg, "bot").variants] == [("bot@1", 50.0), ("bot@2", 50.0)]
    assert [e.decision for e in ro.events(reg, "bot")] == ["start", "preflight-ok", "advance"]
    assert not ro.note(reg, running, "wait", {}, None, None, 104.0)  # stale: no event either


def test_one_holder_at_a_time_and_takeover_after_expiry(registry_location: str) -> None:
    reg = Registry(registry_location)
    assert ro.acquire_lease(reg, "a", 3.0, now=10.0)
    assert not ro.acquire_lease(reg, "b", 3.0, now=11.0)
    assert ro.acquire_lease(reg, "a", 3.0, now=12.0)  # renewed until 15
    assert not ro.acquire_lease(reg, "b", 3.0, now=14.9)
    assert ro.acquire_lease(reg, "b", 3.0, now=15.1)  # a stopped renewing
    assert ro.lease_holder(reg, 15.2) == "b"
    ro.release_lease(reg, "b")
    assert ro.acquire_lease(reg, "a", 3.0, now=15.3)
