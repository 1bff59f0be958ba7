"""The plan printed before training, its warnings, and the `data.overlong` policies."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from cli.main import cli
from trainer.data import Example
from trainer.template import IGNORE, encode, fit_rows


def rows_file(path: Path, rows: int, long_every: int = 0) -> Path:
    """Short prompt/completion rows; every `long_every`-th one (from the first) has a long prompt."""
    with path.open("w") as fh:
        for i in range(rows):
            words = 60 if long_every and i % long_every == 0 else 4
            prompt = f"Ticket {i}: " + " ".join(f"word{j}" for j in range(words))
            fh.write(json.dumps({"prompt": prompt, "completion": f"category {i % 3}"}) + "\n")
    return path


def dry_run(tmp_path: Path, data: Path, *overrides: str) -> Any:
    return CliRunner().invoke(
        cli,
        [
            "train",
            "--dry-run",
            "--base-model",
            "tiny",
            "--data",
            str(data),
            "--output-dir",
            str(tmp_path / "runs"),
            *overrides,
        ],
    )


def test_the_plan_is_printed_and_a_40_row_file_is_warned_about(tmp_path: Path) -> None:
    out = dry_run(tmp_path, rows_file(tmp_path / "small.jsonl", 40), "training.batch_size=4")
    assert out.exit_code == 0, out.output
    text = " ".join(out.output.split())  # rich wraps long lines
    for part in (
        "rows: train ",
        "tokens per row: p50 ",
        "epochs x ",
        "effective batch 8",
        "warm-up ",
        "precision: ",
    ):
        assert part in text, part
    assert "warning: only " in text and "training rows: LoRA usually needs a few hundred" in text
    assert "validation rows" in text  # 5% of 40 rows: too few, or none, to compare checkpoints by
    assert not (tmp_path / "runs").exists()  # a dry run writes nothing


def test_a_file_of_long_rows_is_warned_about_and_its_rows_dropped_by_default(tmp_path: Path) -> None:
    data = rows_file(tmp_path / "long.jsonl", 200, long_every=4)
    out = dry_run(tmp_path, data, "data.max_seq_len=64")
    assert out.exit_code == 0, out.output
    text = " ".join(out.output.split())
    assert "are longer than data.max_seq_len=64" in text and "data.overlong=drop dropped" in text
    assert "training rows: LoRA usually needs" not in text  # 3 of 4 rows are kept
    out = dry_run(tmp_path, data, "data.max_seq_len=64", "data.overlong=error")
    assert out.exit_code == 1 and "Traceback" not in out.output
    assert f"{data}:1: " in out.output and "longer than data.max_seq_len=64" in out.output


def test_truncation_cuts_the_prompt_from_the_left_and_keeps_the_completion_end(tiny_base: Any) -> None:
    from trainer.model import load_tokenizer

    tok = load_tokenizer(tiny_base)
    long_prompt = Example((("user", "context " * 80),), "the answer is 42", "f.jsonl:1")
    too_long_answer = Example((("user", "hi"),), "word " * 200, "f.jsonl:2")
    full = encode(tok, long_prompt, 10_000)
    cut = encode(tok, long_prompt, 48)
    assert cut.truncated and cut.completion_fits and len(cut.input_ids) == 48
    assert cut.input_ids == full.input_ids[-48:]  # the end (completion + end of turn) is kept
    completion = [t for t in full.labels if t != IGNORE]
    assert [t for t in cut.labels if t != IGNORE] == completion
    rows = [cut, encode(tok, too_long_answer, 48)]
    fitted = fit_rows(rows, [long_prompt, too_long_answer], "truncate", 48, "f.jsonl")
    assert (fitted.rows, fitted.truncated, fitted.dropped) == ([cut], 1, 1)
    dropped = fit_rows(rows, [long_prompt, too_long_answer], "drop", 48, "f.jsonl")
    assert (dropped.rows, dropped.dropped) == ([], 2)


def test_steps_follow_epochs_batch_and_accumulation() -> None:
    from trainer.config import load_config
    from trainer.plan import make_plan

    config = load_config(
        None, ["training.batch_size=8", "training.grad_accum=2", "training.warmup_ratio=0.1"]
    )
    plan = make_plan(
        config,
        rows={"train": 100, "val": 30, "test": 10},
        lengths=[50] * 100,
        dropped=0,
        truncated=0,
        items=100,
        world_size=1,
        precision="fp32",
        device="cpu",
    )
    # 13 batches of 8 (the last partial) -> 7 optimizer steps per epoch, as the HF Trainer counts
    assert (plan.steps_per_epoch, plan.steps, plan.epochs, plan.warmup_steps) == (7, 14, 2.0, 2)
    assert plan.effective_batch == 16 and plan.eval_every == 10  # no more often than every 10 steps
    assert not plan.warnings
    override = load_config(None, ["training.max_steps=300"])
    long_plan = make_plan(
        override,
        rows={"train": 100, "val": 30, "test": 0},
        lengths=[50] * 100,
        dropped=0,
        truncated=0,
        items=100,
        world_size=1,
        precision="fp32",
        device="cpu",
    )
    assert (long_plan.steps, long_plan.eval_every) == (300, 30)


@pytest.mark.parametrize("rows", [0, 10])
def test_validation_split_too_small_is_warned_about(rows: int) -> None:
    from tests.trainer.support import fixed_plan
    from trainer.plan import FEW_VAL_ROWS, plan_warnings

    plan = fixed_plan(
        500,
        rows,
        50,
        tokens={"p50": 1, "p95": 1, "max": 1},
        overlong={"max_seq_len": 8, "policy": "drop", "rows": 0, "dropped": 0, "truncated": 0},
        effective_batch=16,
        steps_per_epoch=32,
        steps=64,
        epochs=2,
        warmup_steps=2,
        eval_every=10,
    )
    assert rows < FEW_VAL_ROWS
    assert [w for w in plan_warnings(plan, 500) if "validation rows" in w]
