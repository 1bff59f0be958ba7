"""The rollout controller's `tick` on a real catalog, with evidence rows written as a server writes
them (live rows for the baseline, shadow copies for the candidate). Pre-flight waits for every
live serving replica to have the candidate loaded. The shadow phase: the route copies requests to
the candidate, a pass moves to step 1, a failure rolls back, pause and resume keep the phase.
No server: fast."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from registry import rollouts as ro
from registry.evidence_store import RequestRecord
from registry.routes import get_route
from registry.store import Registry
from serving.experiments import rollout as ctl

SPEC = ro.RolloutSpec(
    "bot@2", "bot@1", steps=(50.0, 100.0), interval_s=1.0, min_requests=10, shadow_first=True
)


def rows(reg: Registry, variant: str, n: int, ts: float, *, shadow: bool, status: str = "ok") -> None:
    tag = "s" if shadow else "l"
    reg.evidence().insert_requests(
        [
            RequestRecord(
                f"{variant}-{tag}-{ts}-{i}",
                ts + i * 0.001,
                "bot",
                variant,
                None,
                0.1 + 0.001 * (i % 7),
                0.05 + 0.001 * (i % 5),
                3,
                2,
                status,
                int(shadow),
            )
            for i in range(n)
        ]
    )


def start(tmp_path: Path, spec: ro.RolloutSpec = SPEC) -> tuple[Registry, ro.Rollout]:
    reg = Registry(str(tmp_path / "registry"))
    reg.rollouts().create("bot", spec, now=100.0)
    assert ctl.tick(reg, "me", now=102.0) == []  # replicas have LEASE_TTL_S to announce themselves
    assert ctl.tick(reg, "me", now=103.5) == [
        "bot: pre-flight passed, shadow phase (100% of requests copied)"
    ]
    r = reg.rollouts().get("bot")
    assert (r.state, r.phase, r.step, r.weight) == ("shadow", "shadow", -1, 0.0)
    route = get_route(reg, "bot")
    assert [(v.ref, v.weight) for v in route.variants] == [("bot@1", 100.0), ("bot@2", 0.0)]
    assert (route.shadow, route.shadow_share) == ("bot@2", 1.0)
    return reg, r


def test_a_shadow_that_passes_moves_to_step_one_and_ends_the_copies(tmp_path: Path) -> None:
    reg, _ = start(tmp_path)
    rows(reg, "bot@1", 30, 103.6, shadow=False)
    rows(reg, "bot@2", 5, 103.6, shadow=True)
    assert ctl.tick(reg, "me", now=104.6) == []  # 5 copies: wait
    assert reg.rollouts().events("bot")[-1].reason == (
        "inconclusive: 30 baseline and 5 candidate requests, need 10 each"
    )
    rows(reg, "bot@2", 25, 104.7, shadow=True)
    rows(
        reg, "bot@2", 30, 104.7, shadow=False
    )  # live candidate rows (none in a real shadow) are not its evidence
    assert ctl.tick(reg, "me", now=105.7)[0].startswith("bot: pass - shadow phase passed: error_rate")
    r = reg.rollouts().get("bot")
    assert (r.state, r.phase, r.step, r.weight) == ("running", "steps", 0, 50.0)
    route = get_route(reg, "bot")
    assert route.shadow is None and [v.weight for v in route.variants] == [50.0, 50.0]
    last = reg.rollouts().events("bot")[-1]
    assert last.decision == "shadow-ok" and last.numbers["candidate"]["requests"] == 30


def test_an_erroring_shadow_is_rolled_back_before_any_user_traffic(tmp_path: Path) -> None:
    reg, _ = start(tmp_path)
    rows(reg, "bot@1", 30, 103.6, shadow=False)
    rows(reg, "bot@2", 20, 103.6, shadow=True, status="error")
    assert ctl.tick(reg, "me", now=104.6)[0].startswith("bot: fail - shadow phase: gate failed: error_rate")
    r = reg.rollouts().get("bot")
    assert (r.state, r.weight) == ("rolled_back", 0.0) and "error_rate +100.00pt" in (r.reason or "")
    route = get_route(reg, "bot")  # kept at 100% baseline (`ab stop bot` ends it), no copies any more
    assert route.shadow is None and [(v.ref, v.weight) for v in route.variants] == [
        ("bot@1", 100.0),
        ("bot@2", 0.0),
    ]
    decisions = [(e.decision, e.weight) for e in reg.rollouts().events("bot")]
    assert decisions == [("start", 0.0), ("preflight-ok", 0.0), ("rollback", 0.0)]


def test_pause_and_resume_keep_the_shadow_phase(tmp_path: Path) -> None:
    reg, _ = start(tmp_path, replace(SPEC, max_wait_s=2.0))
    assert ctl.tick(reg, "me", now=106.5) == [
        "bot: pause - paused after 3s in the shadow phase: "
        "inconclusive: 0 baseline and 0 candidate requests, need 10 each"
    ]
    r = reg.rollouts().get("bot")
    assert (r.state, r.phase, r.weight) == ("paused", "shadow", 0.0)
    assert get_route(reg, "bot").shadow == "bot@2"  # paused: the copies go on, users keep the baseline
    r = ctl.resume(reg, "bot")
    assert (r.state, r.phase) == ("shadow", "shadow")
    r = ctl.pause(reg, "bot")
    assert (r.state, r.phase, r.weight) == ("paused", "shadow", 0.0)


def test_preflight_waits_until_every_live_replica_has_the_candidate_loaded(tmp_path: Path) -> None:
    reg = Registry(str(tmp_path / "registry"))
    reg.rollouts().create("bot", replace(SPEC, shadow_first=False), now=100.0)
    reg.rollouts().announce("a", ["bot"], 3.0, now=100.5)  # replica a has it loaded, b is still loading
    reg.rollouts().announce("b", [], 3.0, now=100.5)
    assert reg.rollouts().replicas_not_ready("bot", now=103.0) == ["b"]
    assert ctl.tick(reg, "a", now=103.0, ready={"bot@2"}) == []
    assert reg.rollouts().get("bot").state == "preflight"
    reg.rollouts().announce("b", ["bot"], 3.0, now=103.2)
    assert ctl.tick(reg, "a", now=103.5, ready={"bot@2"}) == ["bot: pre-flight passed, 50%"]
    reg.rollouts().announce("c", [], 3.0, now=104.0)  # a replica that stopped announcing is not waited for
    assert reg.rollouts().replicas_not_ready("bot", now=107.1) == []
