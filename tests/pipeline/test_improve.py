"""`platform improve` on the tiny model: the plan from a registry with new preference data, a clean
skip on too little data, and a candidate failing an offline gate that leaves the serving alias as it was."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import cli
from registry import reviews as rv
from registry.errors import NotFoundError
from registry.rubric import load_rubric
from registry.store import Registry
from tests.registry.reviewing import finish_review
from tests.trainer.judge_server import scripted_judge

TINY = [
    "--base-model",
    "tiny",
    "--max-steps",
    "1",
    "lora.r=8",
    "lora.alpha=16",
    "data.max_seq_len=64",
    "data.overlong=truncate",  # the sample rows are longer: cut the prompt, keep the answer
    "training.batch_size=2",
    "eval.max_examples=4",
    "eval.max_new_tokens=2",
    "eval.compare_base=false",
]
FAST_SETS = [
    "--set",
    "training.max_steps=1",
    "--set",
    "training.batch_size=2",
    "--set",
    "data.max_seq_len=64",
    "--set",
    "data.overlong=truncate",
    "--set",
    "eval.max_examples=2",
    "--set",
    "eval.max_new_tokens=2",
    "--set",
    "eval.compare_base=false",
    "--set",
    "data.val_fraction=0",
]


@pytest.fixture(scope="module")
def serving(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """bot@1 (tiny SFT) serving as bot:prod, then a finished review with 16 choices against it
    (one registry for the module: the dry run comes first, and changes nothing)."""
    tmp_path = tmp_path_factory.mktemp("improve")
    registry = str(tmp_path / "registry")
    args = [
        "train",
        "--name",
        "bot",
        "--data",
        "sample:support-tickets",
        "--output-dir",
        str(tmp_path / "runs"),
    ]
    res = CliRunner().invoke(cli, [*args, "--registry", registry, *TINY])
    assert res.exit_code == 0, res.output
    reg = Registry(registry)
    reg.set_alias("bot@1", "prod")
    spec = rv.ReviewSpec("bot@1", "bot@1", load_rubric().to_dict(), reviewers_per_item=1, source="t")
    items = [
        rv.NewItem(
            [{"role": "user", "content": f"Ticket {i}: parcel {i} is late."}],
            f"Sorry, {i} ships today.",
            f"no {i}",
            True,
        )
        for i in range(16)
    ]
    reg.reviews().create("later", spec, items)
    finish_review(reg, "later")
    return registry, tmp_path


def _improve(registry: str, tmp_path: Path, *flags: str) -> tuple[int, str]:
    res = CliRunner().invoke(
        cli, ["improve", "bot", "--output-dir", str(tmp_path / "improve"), "--registry", registry, *flags]
    )
    return res.exit_code, res.output


def test_dry_run_prints_the_plan_with_counts_and_changes_nothing(serving: tuple[str, Path]) -> None:
    registry, tmp_path = serving
    code, out = _improve(registry, tmp_path, "--dry-run")
    assert code == 0, out
    assert "serving: bot@1" in out and "16 DPO pairs" in out and "32 KTO rows" in out
    assert "training.objective=dpo from bot@1" in out
    assert [v.ref for v in Registry(registry).list_versions()] == ["bot@1"]

    code, out = _improve(registry, tmp_path, "--dry-run", "--min-rows", "100")
    assert code == 0 and "too little new data since bot@1" in out, out
    code, out = _improve(registry, tmp_path, "--min-rows", "100")  # a clean skip, not a failure
    assert code == 0 and "too little new data" in out, out
    code, out = _improve(registry, tmp_path, "--on-drift")  # nothing logged: no signal moved
    assert code == 0 and "no drift: no signal of bot@1 moved" in out, out
    assert [v.ref for v in Registry(registry).list_versions()] == ["bot@1"]


def test_a_candidate_failing_an_offline_gate_stops_with_the_alias_unchanged(
    serving: tuple[str, Path],
) -> None:
    registry, tmp_path = serving
    with scripted_judge() as judge:  # a model judge joins the gates (judge>=0.5); it calls a tie
        judge.decide = lambda asked: '{"preference": "tie"}'
        flags = ["--judge-url", judge.url, "--judge-model", "scripted"]
        gates = ["--eval-gate", "exact_match>=baseline+2", "--eval-gate", "general>=baseline-0.02"]
        code, out = _improve(registry, tmp_path, *gates, "--eval-max-examples", "3", *flags, *FAST_SETS)
    assert code == 1 and "failed an offline gate" in out and "bot@1 keeps serving" in out, out
    assert "pass: judge 0.5000" in out and judge.asked, out
    assert re.search(r"(pass|FAIL): general \d\.\d{4} \(candidate\)", out), out  # the general set, scored
    reg = Registry(registry)
    candidate = reg.get("bot@2")
    assert "improve:gates-failed" in candidate.tags
    assert (
        candidate.lineage["objective"]["name"] == "dpo"
        and candidate.lineage["objective"]["reference"] == "bot@1"
    )
    assert [s["step"] for s in candidate.lineage["improve"]["steps"]] == ["export", "train"]
    assert reg.get("bot:prod").ref == "bot@1"
    with pytest.raises(NotFoundError):
        reg.rollouts().get("bot")  # no rollout started
