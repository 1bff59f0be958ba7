"""`rollout start --eval-data FILE --eval-gate ...`: both versions are evaluated on a held-out file
before the rollout exists; a failing offline gate stops it with the numbers, a passing one starts it."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import cli
from registry.errors import NotFoundError
from registry.store import Registry
from serving.experiments.gates import GateError, parse_offline_gate


def test_offline_gate_syntax_and_checks() -> None:
    gate = parse_offline_gate("exact_match>=baseline-0.02")
    assert gate.check({"exact_match": 0.50}, {"exact_match": 0.49})[0]
    ok, reason = gate.check({"exact_match": 0.50}, {"exact_match": 0.40})
    assert not ok and "0.4000" in reason and "0.4800" in reason
    assert parse_offline_gate("rougeL>=0.8").check({}, {"rougeL": 0.81})[0]
    assert not parse_offline_gate("loss<=baseline+0.1").check({"loss": 1.0}, {"loss": 1.2})[0]
    for bad in ("exact_match", "exact_match>=", "exact_match=>0.1", "x>=baseline-"):
        with pytest.raises(GateError):
            parse_offline_gate(bad)
    with pytest.raises(GateError, match="no metric 'bleu2'"):
        parse_offline_gate("bleu2>=baseline").check({"bleu": 1.0}, {"bleu": 1.0})


def test_rollout_start_runs_the_offline_gate_first(tiny_run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    result, registry = tiny_run
    reg = Registry(registry)
    v1 = reg.get(result.registry_ref)
    reg.push(v1.name, v1.path, v1.lineage)  # a second version of the same weights
    candidate = f"{v1.name}@{reg.get(v1.name).version}"

    def start(name: str, *gates: str) -> str:  # NAME is the adapter's name: the rollout's route
        args = ["rollout", "start", name, "--candidate", candidate, "--baseline", v1.ref]
        args += [
            "--eval-data",
            "sample:support-tickets",
            "--eval-max-examples",
            "4",
            "--registry",
            str(registry),
        ]
        for g in gates:
            args += ["--eval-gate", g]
        out = CliRunner().invoke(cli, args)
        assert "Traceback" not in out.output
        return f"{out.exit_code}\n{out.output}"

    refused = start(v1.name, "rougeL>=baseline+0.5")  # the same weights cannot be 0.5 better
    assert refused.startswith("1\n") and "offline gate failed, rollout not started" in refused
    assert "rougeL" in refused and "FAIL" in refused
    with pytest.raises(NotFoundError):  # no rollout, no route: no traffic ever reached it
        reg.rollouts().get(v1.name)
    started = start(v1.name, "exact_match>=baseline-0.02", "loss<=baseline+0.01")
    assert started.startswith("0\n") and "pass: exact_match" in started
    assert reg.rollouts().get(v1.name).spec.candidate == candidate
    bad = CliRunner().invoke(cli, ["rollout", "start", "x", "--candidate", candidate, "--eval-gate", "nope"])
    assert bad.exit_code == 2 and "--eval-gate" in bad.output
