"""The training plan a user should check before a run starts, and the warnings it deserves.

Rows per split, token lengths, steps, epochs, effective batch, warm-up, evaluation interval and
precision are worked out the way the HF Trainer does, so the plan shows what will run.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from trainer.config import TrainConfig

FEW_TRAIN_ROWS = 100
"""Fewer training rows than this get a warning: LoRA fits them in a few steps and then memorises."""
FEW_VAL_ROWS = 20
"""A validation split smaller than this gives a loss too noisy to compare checkpoints by."""
OVERLONG_SHARE = 0.05
"""More than this share of rows over max_seq_len gets a warning (they are dropped or cut)."""
EVALUATIONS_PER_RUN = 10
"""`training.eval_every: null` evaluates about this many times over the run ..."""
MIN_EVAL_INTERVAL = 10
"""... but not more often than every this many steps (a short run is evaluated at its end only)."""


@dataclass
class Plan:
    """What the run will do; printed before training and kept in the lineage."""

    rows: dict[str, int]
    tokens: dict[str, int]
    """p50 / p95 / max tokens per training row (chat template included, before any cut)."""
    overlong: dict[str, Any]
    items: int
    """Training rows, or packed blocks when packing."""
    world_size: int
    effective_batch: int
    steps_per_epoch: int
    steps: int
    epochs: float
    warmup_steps: int
    eval_every: int
    precision: str
    device: str
    warnings: list[str] = field(default_factory=list)
    seconds_per_step: float | None = None
    """Measured over the first steps, once training has run them."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def lines(self) -> list[str]:
        """The plan as short lines for the terminal."""
        t, o = self.tokens, self.overlong
        unit = "blocks" if self.items != self.rows["train"] else "rows"
        over = (
            f"{o['rows']} longer: data.overlong={o['policy']} dropped {o['dropped']}, truncated {o['truncated']}"
            if o["rows"]
            else "none longer"
        )
        return [
            f"rows: train {self.rows['train']}, val {self.rows['val']}, test {self.rows['test']}",
            f"tokens per row: p50 {t['p50']}, p95 {t['p95']}, max {t['max']} (max_seq_len {o['max_seq_len']}; {over})",
            f"steps: {self.steps} = {self.epochs:g} epochs x {self.steps_per_epoch} steps "
            f"({self.items} {unit}, effective batch {self.effective_batch}); warm-up {self.warmup_steps} steps",
            f"validation: every {self.eval_every} steps"
            if self.eval_every
            else "validation: once, after training",
            f"precision: {self.precision_text()} on {self.device}",
        ]

    def precision_text(self) -> str:
        if self.precision == "bf16" and self.device.startswith("cpu"):  # trainer/cpu_bf16.py
            return "bf16 (the frozen base's matmuls; adapters, attention and loss in fp32)"
        return self.precision


def token_stats(lengths: list[int]) -> dict[str, int]:
    import numpy as np

    if not lengths:
        return {"p50": 0, "p95": 0, "max": 0}
    values = np.asarray(lengths)
    return {
        "p50": int(np.percentile(values, 50)),
        "p95": int(np.percentile(values, 95)),
        "max": int(values.max()),
    }


def steps_per_epoch(items: int, batch_size: int, grad_accum: int, world_size: int) -> int:
    """Optimizer steps per epoch as the HF Trainer counts them (a last partial batch counts)."""
    batches = math.ceil(items / max(batch_size * world_size, 1))
    return max(batches // grad_accum + int(batches % grad_accum > 0), 1)


def auto_eval_every(steps: int) -> int:
    return max(MIN_EVAL_INTERVAL, math.ceil(steps / EVALUATIONS_PER_RUN))


def eval_interval(config: TrainConfig, steps: int, has_val: bool) -> int:
    """Steps between evaluations: 0 without validation rows or when turned off."""
    t = config.training
    if not has_val or t.eval_every == 0:
        return 0
    if t.eval_every is not None:
        return t.eval_every
    if t.save_every and t.keep_best:  # the kept checkpoints are the evaluated ones
        return t.save_every
    every = auto_eval_every(steps)
    return every if every < steps else 0


def make_plan(
    config: TrainConfig,
    *,
    rows: dict[str, int],
    lengths: list[int],
    dropped: int,
    truncated: int,
    items: int,
    world_size: int,
    precision: str,
    device: str,
) -> Plan:
    t, d = config.training, config.data
    per_epoch = steps_per_epoch(items, t.batch_size, t.grad_accum, world_size)
    steps = t.max_steps if t.max_steps > 0 else math.ceil(t.epochs * per_epoch)
    over = sum(n > d.max_seq_len for n in lengths)
    plan = Plan(
        rows=rows,
        tokens=token_stats(lengths),
        overlong={
            "max_seq_len": d.max_seq_len,
            "policy": d.overlong,
            "rows": over,
            "dropped": dropped,
            "truncated": truncated,
        },
        items=items,
        world_size=world_size,
        effective_batch=t.batch_size * t.grad_accum * world_size,
        steps_per_epoch=per_epoch,
        steps=steps,
        epochs=round(steps / per_epoch, 2),
        warmup_steps=t.warmup_steps if t.warmup_steps > 0 else math.ceil(steps * t.warmup_ratio),
        eval_every=eval_interval(config, steps, rows["val"] > 0),
        precision=precision,
        device=device,
    )
    plan.warnings = plan_warnings(plan, len(lengths))
    return plan


def plan_warnings(plan: Plan, train_rows_read: int) -> list[str]:
    warnings = []
    train, val = plan.rows["train"], plan.rows["val"]
    if train < FEW_TRAIN_ROWS:
        warnings.append(
            f"only {train} training rows: LoRA usually needs a few hundred or more; expect an adapter that "
            "memorises them; watch the validation curve, or add rows"
        )
    if val == 0:
        warnings.append(
            "no validation rows: no validation curve, no best checkpoint, no early stopping; "
            "raise data.val_fraction"
        )
    elif val < FEW_VAL_ROWS:
        warnings.append(
            f"only {val} validation rows: their loss is too noisy to pick a checkpoint by; "
            f"aim for {FEW_VAL_ROWS}+ (raise data.val_fraction)"
        )
    over = plan.overlong
    if train_rows_read and over["rows"] / train_rows_read > OVERLONG_SHARE:
        warnings.append(
            f"{over['rows']} of {train_rows_read} training rows ({over['rows'] / train_rows_read:.0%}) are longer "
            f"than data.max_seq_len={over['max_seq_len']} (p95 {plan.tokens['p95']}, max {plan.tokens['max']}): "
            f"data.overlong={over['policy']} dropped {over['dropped']} and truncated {over['truncated']}; "
            "raise data.max_seq_len if memory allows"
            + (
                ", or set data.overlong=truncate to keep them with the start of the prompt cut"
                if over["dropped"]
                else ""
            )
        )
    return warnings
