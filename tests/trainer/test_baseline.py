"""The prompted baseline (`eval.baseline`): the base with training examples in its prompt, beside
the bare base and the adapter, in the run's metrics, lineage and model card."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from cli.main import cli
from registry.store import Registry
from trainer.baseline import parse_baseline, prompting
from trainer.config import load_config
from trainer.data import Example
from trainer.errors import BaselineError, ConfigError


def test_few_shot_baseline_is_in_the_lineage_and_the_card(tiny_run) -> None:  # type: ignore[no-untyped-def]
    result, registry = tiny_run
    v = Registry(registry).get(result.registry_ref)
    baseline = v.lineage["baseline"]
    assert (
        baseline["setting"] == "few_shot:1" and baseline["k"] == 1 and baseline["label"] == "base+few_shot:1"
    )
    held_out = {r["source"] for r in result.samples}
    assert baseline["shots"] and not set(baseline["shots"]) & held_out  # shots come from the train split
    assert "verdict" in baseline and "base+few_shot:1" in baseline["verdict"]
    assert {c["metric"] for c in baseline["comparisons"]} == {"exact_match", "rougeL"}
    card = (v.path / "README.md").read_text()
    assert "| metric | base | base+few_shot:1 | adapter |" in card
    assert "Against the prompted base (few_shot:1): the adapter" in card
    assert "General-capability set (5 items, exact match): base " in card
    assert v.lineage["general"]["items"] == 5 and "general.arithmetic" in v.lineage["general"]["adapter"]
    assert "general" in v.lineage["metrics"]["adapter"]


def test_auto_few_shot_fits_the_context_and_records_k() -> None:
    train = [Example((("user", f"q{i}"),), f"a{i}", f"f:{i}") for i in range(20)]
    lengths = [30] * 20
    fitted = prompting(parse_baseline("few_shot"), train, lengths, budget=100, seed=1)
    assert fitted is not None and len(fitted.shots) == 3 and fitted.label == "base+few_shot:3"
    assert "K=3" in fitted.note
    none_fit = prompting(parse_baseline("few_shot"), train, lengths, budget=10, seed=1)
    assert none_fit is not None and not none_fit.shots and "no training example fits" in none_fit.note
    shot = fitted.apply(Example((("system", "be brief"), ("user", "q")), "a"))
    roles = [r for r, _ in shot.messages]
    assert roles == ["system", "user", "assistant", "user", "assistant", "user", "assistant", "user"]


def test_bad_baseline_setting_is_a_clear_config_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    for bad, says in (
        ("few_shot:0", "K must be a whole number from 1 to 64"),
        ("five_shot", "expected zero_shot, few_shot, few_shot:K or system:FILE"),
        (f"system:{tmp_path}/none.txt", "no such file"),
    ):
        with pytest.raises(ConfigError, match=f"eval.baseline: .*{says}"):
            load_config(None, [f"eval.baseline={bad}"])
    with pytest.raises(BaselineError):
        parse_baseline("zero_shot:3")
    out = CliRunner().invoke(cli, ["train", "eval.baseline=few_shot:x", "--no-push"])
    assert out.exit_code == 2 and "eval.baseline" in out.output and "Traceback" not in out.output


def test_eval_takes_a_prompted_base_ref(tiny_run) -> None:  # type: ignore[no-untyped-def]
    result, registry = tiny_run
    args = ["eval", "base+few_shot:2", result.registry_ref, "--data", "sample:support-tickets"]
    out = CliRunner().invoke(
        cli, [*args, "--max-examples", "3", "--max-new-tokens", "4", "--registry", str(registry)]
    )
    assert out.exit_code == 0, out.output
    assert "base+few_shot:2" in out.output and f"verdict for {result.registry_ref}: the adapter" in out.output
    bad = CliRunner().invoke(cli, ["eval", "base+few_shot:0", "--data", "sample:support-tickets"])
    assert bad.exit_code == 2 and "K must be a whole number" in bad.output and "Traceback" not in bad.output
