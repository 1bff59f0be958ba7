"""Rollout state in the catalog: conditional transitions (no double step) and the controller lease."""

from __future__ import annotations

import time

import pytest

from registry import rollouts as ro
from registry.routes import get_route
from registry.store import Registry


def test_a_stale_or_repeated_transition_changes_nothing(registry_location: str) -> None:
    reg = Registry(registry_location)
    spec = ro.RolloutSpec("bot@2", "bot@1", steps=(5.0, 50.0, 100.0))
    r = reg.rollouts().create("bot", spec, now=100.0)
    assert [(v.ref, v.weight) for v in get_route(reg, "bot").variants] == [("bot@1", 100.0), ("bot@2", 0.0)]
    running = reg.rollouts().transition(
        r, state="running", step=0, route="weights", decision="preflight-ok", now=101.0
    )
    advanced = reg.rollouts().transition(
        running, state="running", step=1, route="weights", decision="advance", now=102.0
    )
    with pytest.raises(ro.StaleRollout):  # the same tick again (a restart, or a second controller)
        reg.rollouts().transition(
            running, state="running", step=1, route="weights", decision="advance", now=103.0
        )
    assert reg.rollouts().get("bot").step == 1 == advanced.step
    assert [(v.ref, v.weight) for v in get_route(reg, "bot").variants] == [("bot@1", 50.0), ("bot@2", 50.0)]
    assert [e.decision for e in reg.rollouts().events("bot")] == ["start", "preflight-ok", "advance"]
    assert not reg.rollouts().note(running, "wait", {}, None, None, 104.0)  # stale: no event either


def test_one_holder_at_a_time_and_takeover_after_expiry(registry_location: str) -> None:
    reg = Registry(registry_location)
    assert reg.rollouts().acquire_lease("a", 3.0, now=10.0)
    assert not reg.rollouts().acquire_lease("b", 3.0, now=11.0)
    assert reg.rollouts().acquire_lease("a", 3.0, now=12.0)  # renewed until 15
    assert not reg.rollouts().acquire_lease("b", 3.0, now=14.9)
    assert reg.rollouts().acquire_lease("b", 3.0, now=15.1)  # a stopped renewing
    assert reg.rollouts().lease_holder(15.2) == "b"
    reg.rollouts().release_lease("b")
    assert reg.rollouts().acquire_lease("a", 3.0, now=15.3)


def test_the_outcome_is_recorded_with_the_candidate_version(registry_location: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json

    from click.testing import CliRunner

    from cli.main import cli
    from registry.card import with_records
    from tests.registry.test_store import LINEAGE, make_adapter

    reg = Registry(registry_location)
    for seed in (1, 2):
        reg.push("bot", make_adapter(tmp_path / f"a{seed}", seed), LINEAGE)
    r = reg.rollouts().create("bot", ro.RolloutSpec("bot@2", "bot@1", steps=(5.0, 100.0)), now=100.0)
    r = reg.rollouts().transition(
        r, state="running", step=0, route="weights", decision="preflight-ok", now=101.0
    )
    why = "gate failed: error_rate +4.0pt > +1pt (p=0.003)"
    reg.rollouts().transition(
        r, state="rolled_back", route="hold_baseline", decision="rollback", reason=why, now=102.0
    )
    assert reg.rollouts().outcomes_for("bot@1") == []
    [outcome] = reg.rollouts().outcomes_for("bot@2")
    assert (outcome["outcome"], outcome["baseline"], outcome["reason"]) == ("rolled_back", "bot@1", why)
    card = with_records("# bot@2\n", [], reg.rollouts().outcomes_for("bot@2"))
    assert "## Rollouts" in card and "rolled back against bot@1" in card and why in card
    shown = CliRunner().invoke(cli, ["registry", "show", "bot@2", "--registry", registry_location])
    assert shown.exit_code == 0 and "rolled back" in shown.output, shown.output
    data = json.loads(
        CliRunner()
        .invoke(cli, ["registry", "show", "bot@2", "--json", "--registry", registry_location])
        .output
    )
    assert data["rollouts"][0]["reason"] == why and "rollout:rolled-back" in data["tags"]


def test_the_next_rollout_takes_over_the_route_a_rolled_back_one_holds(
    registry_location: str, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    from click.testing import CliRunner

    from cli.main import cli
    from registry.routes import start_route, stop_route
    from tests.registry.test_store import LINEAGE, make_adapter

    reg = Registry(registry_location)
    for seed in (1, 2, 3):
        reg.push("bot", make_adapter(tmp_path / f"a{seed}", seed), LINEAGE)
    reg.set_alias("bot@1", "prod")
    r = reg.rollouts().create("bot", ro.RolloutSpec("bot@2", "bot@1", steps=(5.0, 100.0)), now=100.0)
    r = reg.rollouts().transition(
        r, state="running", step=0, route="weights", decision="preflight-ok", now=101.0
    )
    reg.rollouts().transition(r, state="rolled_back", route="hold_baseline", decision="rollback", now=102.0)
    assert [(v.ref, v.weight) for v in get_route(reg, "bot").variants] == [("bot@1", 100.0), ("bot@2", 0.0)]

    def start(candidate: str) -> tuple[int, str]:
        args = ["rollout", "start", "bot", "--candidate", candidate, "--registry", registry_location]
        res = CliRunner().invoke(cli, args)
        return res.exit_code, res.output

    code, out = start("bot@3")  # no `platform ab stop` in between
    assert code == 0, out
    assert (
        reg.rollouts().get("bot").state == "preflight" and reg.rollouts().get("bot").spec.candidate == "bot@3"
    )
    assert [(v.ref, v.weight) for v in get_route(reg, "bot").variants] == [("bot@1", 100.0), ("bot@3", 0.0)]

    # a route a person set up after a finished rollout is still refused
    r = reg.rollouts().get("bot")
    reg.rollouts().transition(r, state="aborted", route="hold_baseline", decision="abort", now=time.time())
    stop_route(reg, "bot")
    start_route(reg, "bot", [("bot@1", 50.0), ("bot@2", 50.0)])
    code, out = start("bot@3")
    assert code != 0 and "platform ab stop bot" in out, out
    assert [(v.ref, v.weight) for v in get_route(reg, "bot").variants] == [("bot@1", 50.0), ("bot@2", 50.0)]
