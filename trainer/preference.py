"""Preference tuning: DPO and KTO through TRL's trainers, on LoRA and QLoRA.

`training.objective: dpo|kto` turns `platform train` into this recipe: the same base model, LoRA
settings, run folder, evaluation, lineage and registry push as SFT, with TRL's `DPOTrainer` (pairs)
or `KTOTrainer` (labelled rows) in place of the SFT loop. Starting from a version
(`--init-adapter support:prod`), the reference policy is that version: TRL keeps a frozen copy of
the loaded adapter as `ref`; from a fresh LoRA it is the base model (adapters off).

The evaluation adds preference metrics on the held-out rows (DPO: reward accuracy and margin, the
share of pairs where the tuned policy prefers the chosen answer more than the reference does) beside
the task metrics, which compare generated answers with the preferred answer of each held-out row.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from trainer.callbacks import JsonlLogCallback, RichProgressCallback
from trainer.data import DataReport
from trainer.errors import TrainerError
from trainer.evaluate import EvalResult
from trainer.lineage import training_record
from trainer.preference_data import PreferenceRow, read_preferences, split_preferences
from trainer.recipe import LoRARecipe, RunResult

OBJECTIVES = ("sft", "dpo", "kto")
PREFERENCE_METRICS = ("rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected", "loss")


class PreferenceRecipe(LoRARecipe):
    """LoRARecipe with preference data and TRL's DPO/KTO trainer."""

    def setup(self) -> None:
        c = self.config
        path = self._data_path(c.data.path)
        rows = read_preferences(path, c.training.objective)
        self.pref_splits, duplicates = split_preferences(rows, c.data.val_fraction, c.data.test_fraction)
        self.report = DataReport(
            source=c.data.path,
            shape="pairs" if c.training.objective == "dpo" else "unpaired",
            rows_read=len(rows),
            duplicates_dropped=duplicates,
            splits={k: len(v) for k, v in self.pref_splits.items()},
        )
        wanted = [r for r in self.pref_splits["test"] if r.label is not False]  # desirable answers only
        self.splits = {"train": [], "val": [], "test": [r.as_example() for r in wanted]}
        self._setup_model()
        self.val_rows = []

    @staticmethod
    def _data_path(spec: str) -> Path:
        if spec.startswith("sample:"):
            from trainer.samples import sample_path

            return Path(sample_path(spec.split(":", 1)[1]))
        path = Path(spec).expanduser()
        if not path.is_file():
            raise TrainerError(f"data.path: {spec} is not a file (preference rows are read from JSONL)")
        return path

    def _setup_model(self) -> None:
        import torch

        from registry.basemodels import resolve_base_model
        from trainer.model import apply_lora, load_base, load_tokenizer

        c = self.config
        self.base = resolve_base_model(c.base_model)
        self.tokenizer = load_tokenizer(self.base)
        model = load_base(self.base, c.training.dtype, c.lora.quantize)
        torch.manual_seed(c.training.seed)
        init_from = self._init_adapter() if c.init_adapter else None
        self.model = apply_lora(model, c.lora, c.training.gradient_checkpointing, init_from)
        self.make_run_dir()

    def _trainer(self, train: list[PreferenceRow], callbacks: list[Any]) -> Any:
        import math

        from datasets import Dataset

        from trainer.hardware import autocast_bf16, has_cuda, resolve_precision
        from trainer.plan import steps_per_epoch

        c, t = self.config, self.config.training
        precision = resolve_precision(t.precision)
        per_epoch = steps_per_epoch(len(train), t.batch_size, t.grad_accum, 1)
        steps = t.max_steps if t.max_steps > 0 else math.ceil(t.epochs * per_epoch)
        warmup = t.warmup_steps if t.warmup_steps > 0 else math.ceil(steps * t.warmup_ratio)
        self.console.print(
            f"[bold]plan[/] {t.objective}: {len(train)} training rows, {steps} steps "
            f"(effective batch {t.batch_size * t.grad_accum}), warm-up {warmup}, {precision}, "
            f"reference {self.parent['ref'] if self.parent else 'the base model'}"
        )
        common: dict[str, Any] = {
            "output_dir": str(self.run_dir / "checkpoints"),
            "max_steps": steps,
            "per_device_train_batch_size": t.batch_size,
            "per_device_eval_batch_size": t.batch_size,
            "gradient_accumulation_steps": t.grad_accum,
            "learning_rate": t.lr,
            "lr_scheduler_type": t.lr_scheduler,
            "warmup_steps": warmup,
            "optim": t.optimizer,
            "weight_decay": t.weight_decay,
            "max_grad_norm": t.max_grad_norm,
            "logging_steps": 1,
            "save_strategy": "no",
            "eval_strategy": "no",
            "seed": t.seed,
            "data_seed": t.seed,
            "report_to": t.report_to or "none",
            "disable_tqdm": True,
            "dataloader_num_workers": 0,
            "dataloader_pin_memory": False,
            "beta": t.beta,
            "max_length": c.data.max_seq_len,
            "gradient_checkpointing": t.gradient_checkpointing,
            "bf16": autocast_bf16(precision),  # a CPU's bf16 is _base_matmuls
            "fp16": precision == "fp16",
            "use_cpu": not has_cuda(),
        }
        data = Dataset.from_list([r.trl_row() for r in train])
        if t.objective == "dpo":
            from trl.trainer.dpo_config import DPOConfig
            from trl.trainer.dpo_trainer import DPOTrainer

            rpo: dict[str, Any] = (
                {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, t.rpo_alpha]} if t.rpo_alpha else {}
            )
            return DPOTrainer(
                model=self.model,
                args=DPOConfig(**common, **rpo),
                train_dataset=data,
                processing_class=self.tokenizer,
                callbacks=callbacks,
            )
        from trl.trainer.kto_config import KTOConfig
        from trl.trainer.kto_trainer import KTOTrainer

        return KTOTrainer(
            model=self.model,
            args=KTOConfig(**common),
            train_dataset=data,
            processing_class=self.tokenizer,
            callbacks=callbacks,
        )

    def train(self) -> float:
        from transformers import PrinterCallback

        train = self.pref_splits["train"]
        if not train:
            raise TrainerError(f"{self.config.data.path}: no training rows left after the split")
        callbacks = [JsonlLogCallback(self.run_dir / "train_log.jsonl"), RichProgressCallback(self.console)]
        if self.tracking is not None:  # rank 0: the same trackers as SFT, held-out rewards included
            self.tracking.start()
            callbacks += self.tracking.callbacks()
        self.trl = self._trainer(train, callbacks)
        self.trl.remove_callback(PrinterCallback)
        start = time.monotonic()
        with self._base_matmuls():
            self.trl.train()
        self.train_seconds = time.monotonic() - start
        self.steps = self.trl.state.global_step
        self.trained = training_record(self.trl, self.train_seconds)
        self.final_val_loss = None
        return self.train_seconds

    def evaluate(self) -> dict[str, EvalResult]:
        results = super().evaluate()
        held_out = self.pref_splits["test"] or self.pref_splits["val"]
        self.preference_metrics: dict[str, float] = {}
        if held_out and self.config.training.objective == "dpo":
            from datasets import Dataset

            out = self.trl.evaluate(Dataset.from_list([r.trl_row() for r in held_out]))
            self.preference_metrics = {
                k.removeprefix("eval_"): round(float(v), 4)
                for k, v in out.items()
                if k.removeprefix("eval_") in PREFERENCE_METRICS
            }
            self.preference_metrics["pairs"] = float(len(held_out))
        return results

    def extra_metrics(self) -> dict[str, dict[str, float]]:
        # in metrics.json, the lineage and the trackers (heldout.preference.rewards/accuracies)
        return {"preference": self.preference_metrics} if self.preference_metrics else {}

    def save(self) -> RunResult:
        result = super().save()
        t = self.config.training
        result.lineage["objective"] = {
            "name": t.objective,
            "beta": t.beta,
            "rpo_alpha": t.rpo_alpha,
            "reference": self.parent["ref"] if self.parent else "base model (adapters disabled)",
            "trainer": f"trl {_version('trl')}",
            "held_out_rows": len(self.pref_splits["test"]),
        }
        result.lineage["libraries"]["trl"] = _version("trl")
        (self.run_dir / "lineage.json").write_text(json.dumps(result.lineage, indent=2) + "\n")
        return result


def _version(name: str) -> str:
    from importlib.metadata import version

    return version(name)
