"""The CLI: user mistakes become one clear message and a non-zero exit, never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import cli


def test_bad_data_names_file_and_line_without_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "a", "completion": "b"}) + "\n{oops\n")
    result = CliRunner().invoke(cli, ["train", "--data", str(bad), "--base-model", "tiny", "--no-push"])
    assert result.exit_code == 1
    assert f"{bad}:2: invalid JSON" in result.output
    assert "Traceback" not in result.output


def test_bad_config_lists_every_problem(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["train", "lora.r=0", "training.dtype=fp8", "--no-push"])
    assert result.exit_code == 2
    assert "lora.r must be >= 1" in result.output and "training.dtype must be" in result.output


def test_unknown_base_model_is_a_clear_error() -> None:
    result = CliRunner().invoke(cli, ["train", "--base-model", "embedded/nope", "--no-push"])
    assert result.exit_code == 2
    assert "unknown embedded base model 'embedded/nope'" in result.output


def test_train_end_to_end_on_the_tiny_model_pushes_to_the_registry(tmp_path: Path) -> None:
    args = [
        "train",
        "--base-model",
        "tiny",
        "--name",
        "cli-tiny",
        "--output-dir",
        str(tmp_path / "runs"),
        "--registry",
        str(tmp_path / "reg"),
        "training.max_steps=2",
        "eval.max_examples=4",
        "eval.max_new_tokens=4",
        "eval.baseline=few_shot:1",
        "eval.general_max_examples=3",
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "registered as cli-tiny@1" in result.output
    table = result.output.split("held-out evaluation", 1)[1]
    assert "┃ metric " in table and "base+few_shot:1" in table and "adapter" in table
    assert "verdict: the adapter" in table and "general set (3 items, exact match): base " in table
    plan = result.output.split("train ━", 1)[0]  # printed before training starts
    for part in ("rows: train ", "tokens per row: p50 ", "steps: 2 = ", "effective batch 16", "precision: "):
        assert part in plan, part
    listing = CliRunner().invoke(cli, ["registry", "list", "--json", "--registry", str(tmp_path / "reg")])
    assert [r["ref"] for r in json.loads(listing.output)] == ["cli-tiny@1"]


def test_bad_name_is_refused_before_anything_runs_or_is_created(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(
        cli, ["train", "--base-model", "tiny", "--name", "../x", "--registry", str(tmp_path / "reg")]
    )
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "name: invalid name '../x'" in lines[0], result.output
    assert "Traceback" not in result.output
    assert list(tmp_path.iterdir()) == []


def test_fields_checked_later_are_checked_up_front(tmp_path: Path) -> None:
    missing = tmp_path / "nope.jsonl"
    result = CliRunner().invoke(
        cli,
        [
            "train",
            "--data",
            str(missing),
            "--base-model",
            str(tmp_path / "no-model"),
            "--output-dir",
            str(tmp_path / "runs"),
            "training.resume=last",
            "data.test_path=sample:nope",
        ],
    )
    assert result.exit_code == 2
    for field in (
        "data.path:",
        "data.test_path: unknown sample 'nope'",
        "base_model:",
        "training.resume=last",
    ):
        assert field in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "runs").exists()


def test_ray_options_without_workers_are_a_usage_error() -> None:
    result = CliRunner().invoke(
        cli, ["train", "--ray-address", "auto", "--gpus-per-worker", "1", "--no-push"]
    )
    assert result.exit_code == 2
    assert "--ray-address, --gpus-per-worker: only with --workers N" in result.output
    assert "Traceback" not in result.output
