"""The shipped general-capability set: its contents, its scoring, `platform eval --general`, and the
offline gate `general>=baseline-0.02` that stops a rollout of a version that forgot."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from cli.main import cli
from pipeline.improve import ImproveSettings
from registry.errors import NotFoundError
from registry.store import Registry
from trainer.general import GENERAL_FILE, load_items, normalize, score

ITEMS = 5


def test_the_shipped_set_covers_five_skills_with_exact_answers() -> None:
    items = load_items()
    assert len(items) == 300 and len({i.id for i in items}) == 300 and len({i.prompt for i in items}) == 300
    first = {i.category for i in load_items(5)}
    assert first == {"instruction", "formatting", "arithmetic", "reading", "knowledge"}
    assert "CC0" in (GENERAL_FILE.parent / "LICENSE").read_text()
    assert normalize("**Paris.**") == normalize("paris")
    assert normalize('```json\n{"item":"x"}\n```', True) == normalize('{"item": "x"}', True)
    assert normalize("river", True) != normalize("RIVER", True)
    assert normalize("14022013") != normalize("14/02/2013")
    assert score(["88", "no"], load_items(3)[2:3] * 2) == {"general": 0.5, "general.arithmetic": 0.5}


def test_the_general_training_sample_shares_no_prompt_with_the_set() -> None:
    from trainer.data import load_examples
    from trainer.general.build import prompt_key

    rows, shape, _ = load_examples("sample:general-train")
    assert shape == "prompt_completion" and len(rows) >= 300
    evaluated = {prompt_key(i.prompt) for i in load_items()}
    trained = [prompt_key(ex.messages[-1][1]) for ex in rows]
    assert len(set(trained)) == len(trained) and not evaluated & set(trained)
    # the same skills by the same generators, but common knowledge: all its questions are in the set
    starts = ("Reply with only the word", "Write the date", "What is", "Read the text")
    assert all(any(ex.messages[-1][1].startswith(s) for ex in rows) for s in starts)
    assert not any("capital of" in ex.messages[-1][1] for ex in rows)


@pytest.fixture(scope="module")
def knows_the_set(tmp_path_factory: pytest.TempPathFactory, tiny_run):  # type: ignore[no-untyped-def]
    """gen@1: the tiny model taught the first general items (it answers them), serving as gen:prod;
    gen@2: the session's tiny support adapter (it answers junk), the candidate."""
    from rich.console import Console

    from trainer.config import load_config
    from trainer.publish import publish
    from trainer.recipe import run

    root = tmp_path_factory.mktemp("general")
    data = root / "general-items.jsonl"
    rows = [json.dumps({"prompt": i.prompt, "completion": i.answer}) + "\n" for i in load_items(ITEMS)]
    data.write_text("".join(rows) * 4)
    config = load_config(
        None,
        [
            "base_model=embedded/tiny-llama",
            "name=gen",
            f"output_dir={root / 'runs'}",
            f"data.path={data}",
            "data.dedup=false",
            "data.val_fraction=0",
            "data.test_fraction=0",
            "data.max_seq_len=64",
            "training.max_steps=12",  # enough to answer 4 of the 5 (0.8; the base: 0)
            "training.grad_accum=1",
            "training.lr=0.02",
            "eval.general_max_examples=0",
        ],
    )
    registry = root / "registry"
    ref = publish(run(config, console=Console(quiet=True)), str(registry))
    reg = Registry(registry)
    junk = tiny_run[0]
    candidate = reg.push("gen", junk.adapter_dir, junk.lineage).ref
    reg.set_alias(ref, "prod")
    reg.close()
    return registry, ref, candidate


def test_eval_general_scores_each_version(knows_the_set) -> None:  # type: ignore[no-untyped-def]
    registry, taught, _ = knows_the_set
    args = ["eval", "base", taught, "--general", "--general-max-examples", str(ITEMS)]
    out = CliRunner().invoke(cli, [*args, "--registry", str(registry)])
    assert out.exit_code == 0, out.output
    assert f"general-capability set ({ITEMS} items, exact match)" in out.output
    row = next(line for line in out.output.splitlines() if line.startswith("│ general "))
    base, version = (float(x) for x in row.strip("│ ").split("│")[1:3])
    assert version >= 0.4 and base < version
    missing = CliRunner().invoke(cli, ["eval", "base"])
    assert missing.exit_code == 2 and "--general" in missing.output


def test_general_gate_stops_a_rollout_of_a_version_that_forgot(knows_the_set) -> None:  # type: ignore[no-untyped-def]
    registry, serving, candidate = knows_the_set
    args = ["rollout", "start", "gen", "--candidate", candidate, "--eval-gate", "general>=baseline-0.02"]
    out = CliRunner().invoke(cli, [*args, "--eval-max-examples", str(ITEMS), "--registry", str(registry)])
    assert out.exit_code == 1 and "offline gate failed, rollout not started" in out.output, out.output
    assert "FAIL: general 0.0000 (candidate)" in out.output and "Traceback" not in out.output
    reg = Registry(registry)
    assert reg.get("gen:prod").ref == serving  # the alias did not move
    with pytest.raises(NotFoundError):
        reg.rollouts().get("gen")  # no rollout, no route
    assert "general>=baseline-0.02" in ImproveSettings.eval_gates  # `platform improve` checks it too
