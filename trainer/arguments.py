"""The HF `TrainingArguments` of a run, from its config and its plan (steps, evaluation, precision)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trainer.config import TrainingSettings
from trainer.hardware import autocast_bf16, has_cuda
from trainer.plan import Plan

BEST_METRIC_KEYS = {"val_loss": ("eval_loss", False), "exact_match": ("eval_exact_match", True)}
BEST_METRIC_KEYS["rougeL"] = ("eval_rougeL", True)
"""`training.best_metric` -> (the Trainer's metric name, greater is better)."""


def save_steps(t: TrainingSettings, plan: Plan) -> int:
    """Steps between checkpoints: every evaluation when the best one is kept, else `save_every`."""
    if plan.eval_every and t.keep_best:
        # load_best_model_at_end needs a checkpoint at evaluations: a multiple of eval_every
        return (
            plan.eval_every * max(1, round(t.save_every / plan.eval_every))
            if t.save_every
            else plan.eval_every
        )
    return t.save_every


def training_arguments(
    t: TrainingSettings,
    plan: Plan,
    output_dir: Path,
    strategy: dict[str, Any] | None = None,
    padded: bool = True,
) -> Any:
    """`strategy`: the fsdp/fsdp_config or deepspeed keywords of `training.strategy` (trainer/strategy.py);
    `padded`: the training batches are padded rows (False: packed blocks or padding-free batches,
    which length grouping does not help)."""
    from transformers import TrainingArguments

    evaluating = plan.eval_every > 0
    keep_best = evaluating and t.keep_best
    metric, greater = BEST_METRIC_KEYS[t.best_metric]
    every = save_steps(t, plan)
    return TrainingArguments(
        output_dir=str(output_dir),
        max_steps=plan.steps,
        num_train_epochs=plan.epochs,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        learning_rate=t.lr,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=plan.warmup_steps,
        optim=t.optimizer,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        # autocast on a GPU; a CPU's bf16 is the frozen base's matmuls only (trainer/cpu_bf16.py)
        bf16=autocast_bf16(plan.precision),
        fp16=plan.precision == "fp16",  # loss scaling (GradScaler) comes with it
        use_cpu=not has_cuda(),
        logging_steps=1,
        eval_strategy="steps" if evaluating else "no",
        eval_steps=plan.eval_every or None,
        save_strategy="steps" if every else "no",
        save_steps=every or 500,
        save_total_limit=2 if keep_best else 3,  # the best checkpoint is kept beside the newest
        load_best_model_at_end=keep_best,
        metric_for_best_model=metric if evaluating else None,
        greater_is_better=greater if evaluating else None,
        seed=t.seed,
        data_seed=t.seed,
        train_sampling_strategy="group_by_length" if t.group_by_length and padded else "random",
        report_to="none",  # trackers come as callbacks (trainer/tracking.py)
        run_name=output_dir.parent.name,
        # real tokens for tokens/s and the lineage (padding-free batches have no padding, nor a mask)
        include_num_input_tokens_seen="non_padding" if padded else "all",
        disable_tqdm=True,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        dataloader_pin_memory=False,
        # every LoRA weight gets a gradient each step; with non-reentrant checkpointing (trainer/model.py)
        # DDP needs no search for unused parameters (and reentrant checkpointing would break under it)
        ddp_find_unused_parameters=False,
        **(strategy or {}),
    )
