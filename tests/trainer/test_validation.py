"""The validation curve, the best checkpoint kept, and the overfitting warning, on the tiny model."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

VAL_FRACTION, TEST_FRACTION = 0.3, 0.1


def overfit_file(path: Path, rows: int) -> Path:
    """Rows whose training answers do not carry over to the validation rows (as answers learnt by
    heart do not): fitting the training split can only raise the validation loss after a while."""
    from trainer.data import Example, split_of

    rng = random.Random(7)
    with path.open("w") as fh:
        for i in range(rows):
            prompt = f"Which colour is item {i}?"
            held_out = split_of(Example((("user", prompt),), ""), VAL_FRACTION, TEST_FRACTION) != "train"
            colour = rng.choice(["blue", "green"] if held_out else ["red", "orange"])
            fh.write(json.dumps({"prompt": prompt, "completion": f"Item {i} is {colour}."}) + "\n")
    return path


@pytest.fixture(scope="module")
def overfit_run(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """16 epochs (one step each) over 40 rows at a high constant learning rate, evaluated every 2 steps."""
    from rich.console import Console

    from trainer.config import load_config
    from trainer.recipe import run

    root = tmp_path_factory.mktemp("overfit")
    config = load_config(
        None,
        [
            "base_model=tiny",
            "name=overfit",
            f"data.path={overfit_file(root / 'colours.jsonl', 40)}",
            f"data.val_fraction={VAL_FRACTION}",
            f"data.test_fraction={TEST_FRACTION}",
            f"output_dir={root / 'runs'}",
            "training.epochs=16",
            "training.batch_size=32",
            "training.grad_accum=1",
            "training.lr=0.01",
            "training.lr_scheduler=constant",
            "training.eval_every=2",
            "eval.max_examples=2",
            "eval.max_new_tokens=4",
            "eval.compare_base=false",
        ],
    )
    return run(config, Console(quiet=True))


def test_eval_every_writes_a_validation_curve_and_keeps_the_best_checkpoint(overfit_run: Any) -> None:
    from safetensors.torch import load_file

    result = overfit_run
    log = [json.loads(line) for line in (result.run_dir / "train_log.jsonl").read_text().splitlines()]
    curve = [(r["step"], r["eval_loss"]) for r in log if "eval_loss" in r]
    steps = result.lineage["training"]["steps"]
    assert [s for s, _ in curve] == list(range(2, steps + 1, 2))
    best_step, best_loss = min(curve, key=lambda c: c[1])
    kept = result.lineage["training"]["best_checkpoint"]
    assert kept["step"] == best_step < steps and kept["value"] == pytest.approx(best_loss)
    # the adapter saved is the best checkpoint's, not the last step's
    saved = load_file(result.adapter_dir / "adapter_model.safetensors")
    best = load_file(result.run_dir / "checkpoints" / f"checkpoint-{best_step}" / "adapter_model.safetensors")
    assert saved.keys() == best.keys()
    assert all((saved[k] == best[k]).all() for k in saved)
    assert result.lineage["training"]["final_val_loss"] == pytest.approx(best_loss, rel=1e-4)
    assert (result.run_dir / "loss.png").read_bytes()[:4] == b"\x89PNG"


def test_overfitting_is_warned_about_and_recorded_with_the_run(overfit_run: Any) -> None:
    warnings = overfit_run.lineage["training"]["warnings"]
    overfit = [w for w in warnings if w.startswith("overfitting:")]
    assert overfit, warnings
    assert "validation loss rose" in overfit[0] and "training loss fell" in overfit[0]
    lineage = json.loads((overfit_run.run_dir / "lineage.json").read_text())
    assert overfit[0] in lineage["training"]["warnings"]
    from registry.adapter import validate_adapter
    from registry.card import card_text

    card = card_text("overfit", 1, lineage, validate_adapter(overfit_run.adapter_dir))
    assert "## Training warnings" in card and overfit[0] in card  # the model card says it too
