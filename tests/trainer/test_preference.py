"""DPO and KTO through TRL on the tiny model: preference rows exported from a real review set,
one training step from a registry version, and a pushed version whose lineage names the objective,
the export sidecar and the reference version."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import cli
from registry import reviews as rv
from registry.rubric import load_rubric
from registry.store import Registry
from tests.registry.reviewing import finish_review

FAST = [
    "--base-model",
    "tiny",
    "--max-steps",
    "1",
    "lora.r=8",
    "lora.alpha=16",
    "data.max_seq_len=64",
    "data.overlong=truncate",  # the sample rows are longer: cut the prompt, keep the answer
    "training.batch_size=2",
    "eval.max_examples=2",
    "eval.max_new_tokens=2",
    "eval.compare_base=false",
    "data.val_fraction=0",
    "data.test_fraction=0.25",
]


def _train(registry: str, runs: Path, *args: str) -> tuple[int, str]:
    res = CliRunner().invoke(
        cli, ["train", "--name", "bot", "--output-dir", str(runs), "--registry", registry, *FAST, *args]
    )
    return res.exit_code, res.output


@pytest.fixture(scope="module")
def reviewed(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """A registry with bot@1 (SFT, tiny) and a finished review of bot@1 against itself on 16 prompts."""
    root = tmp_path_factory.mktemp("prefs")
    registry = str(root / "registry")
    code, out = _train(registry, root / "runs", "--data", "sample:support-tickets")
    assert code == 0, out
    reg = Registry(registry)
    spec = rv.ReviewSpec("bot@1", "bot@1", load_rubric().to_dict(), reviewers_per_item=1, source="t")
    items = [
        rv.NewItem(
            [{"role": "user", "content": f"Ticket {i}: my order #{i} has not arrived."}],
            f"Category: shipping. Sorry about order {i}, it ships today.",
            f"no idea {i}",
            a_on_left=i % 2 == 0,
        )
        for i in range(16)
    ]
    reg.reviews().create("polite", spec, items)
    finish_review(reg, "polite")
    return registry, root


@pytest.mark.parametrize(("objective", "flag"), [("dpo", "--pairs"), ("kto", "--unpaired")])
def test_a_preference_objective_trains_from_a_version_and_pushes_one_with_its_lineage(
    reviewed: tuple[str, Path], objective: str, flag: str, tmp_path: Path
) -> None:
    registry, _ = reviewed
    data = tmp_path / f"{objective}.jsonl"
    export = CliRunner().invoke(
        cli, ["data", "export", "bot", flag, "--out", str(data), "--registry", registry]
    )
    assert export.exit_code == 0, export.output
    code, out = _train(
        registry,
        tmp_path / "runs",
        "--data",
        str(data),
        "--init-adapter",
        "bot@1",
        f"training.objective={objective}",
        "training.tracking=tensorboard",
        *(["training.rpo_alpha=1.0"] if objective == "dpo" else []),  # DPO with an NLL term (RPO)
    )
    assert code == 0, out
    new = Registry(registry).get("bot")
    assert new.version >= 2 and new.parent == 1
    lineage = new.lineage
    assert lineage["objective"]["name"] == objective and lineage["objective"]["reference"] == "bot@1"
    assert lineage["objective"]["rpo_alpha"] == (1.0 if objective == "dpo" else 0.0)
    assert lineage["init_adapter"]["ref"] == "bot@1"
    sidecar = json.loads(Path(str(data) + ".export.json").read_text())
    assert lineage["export"]["sha256"] == sidecar["sha256"] and lineage["export"]["kind"] == flag.strip("-")
    assert lineage["config"]["training"]["objective"] == objective and "trl" in lineage["libraries"]
    assert "exact_match" in lineage["metrics"]["adapter"]
    if objective == "dpo":  # reward accuracy and margin on the held-out pairs
        assert {"rewards/accuracies", "rewards/margins"} <= set(lineage["metrics"]["preference"])
    # the run is tracked as SFT runs are: the training curve, and for DPO the held-out rewards
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars: set[str] = set()
    for events in Path(lineage["tracking"]["tensorboard"]["log_dir"]).glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events))
        acc.Reload()
        scalars |= set(acc.Tags()["scalars"])
    assert "train/loss" in scalars and "heldout.adapter.exact_match" in scalars
    if objective == "dpo":
        assert "heldout.preference.rewards/accuracies" in scalars


def test_sft_rows_given_to_dpo_are_a_clear_error_naming_the_line(
    reviewed: tuple[str, Path], tmp_path: Path
) -> None:
    registry, _ = reviewed
    data = tmp_path / "sft.jsonl"
    data.write_text(json.dumps({"prompt": "hi", "completion": "hello"}) + "\n")
    code, out = _train(registry, tmp_path / "runs", "--data", str(data), "training.objective=dpo")
    assert code != 0 and f"{data}:1" in out and "--pairs" in out and "Traceback" not in out, out
