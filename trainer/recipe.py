"""The LoRA fine-tuning recipe: setup -> train -> evaluate -> save, one readable class.

Training runs through the Hugging Face Trainer, so `accelerate launch`/`torchrun` scale it
to several GPUs unchanged. Adapters are saved as safetensors only.
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

from registry.basemodels import BaseModel, resolve_base_model
from trainer.callbacks import JsonlLogCallback, RichProgressCallback, plot_losses
from trainer.config import TrainConfig
from trainer.data import DataReport, Example, prepare
from trainer.errors import TrainerError
from trainer.evaluate import EvalResult, evaluate_base_and_adapter
from trainer.export import HELDOUT_FILE, export_lineage, heldout_record
from trainer.model import apply_lora, load_base, load_tokenizer
from trainer.template import IGNORE, Encoded, encode, pack


@dataclass
class RunResult:
    """What a finished run produced, for the CLI table and the registry."""

    run_dir: Path
    adapter_dir: Path
    base: BaseModel
    data: DataReport
    metrics: dict[str, dict[str, float]]
    lineage: dict[str, Any]
    train_seconds: float
    total_seconds: float
    registry_ref: str | None = None
    samples: list[dict[str, str]] = field(default_factory=list)


class _Rows:
    """Map-style dataset of encoded rows for the HF Trainer."""

    def __init__(self, rows: list[Encoded]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        return {"input_ids": self.rows[i].input_ids, "labels": self.rows[i].labels}


class _Collator:
    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, batch: list[dict[str, list[int]]]) -> dict[str, Any]:
        import torch

        width = max(len(b["input_ids"]) for b in batch)
        ids = [b["input_ids"] + [self.pad_id] * (width - len(b["input_ids"])) for b in batch]
        labels = [b["labels"] + [IGNORE] * (width - len(b["labels"])) for b in batch]
        mask = [[1] * len(b["input_ids"]) + [0] * (width - len(b["input_ids"])) for b in batch]
        return {
            "input_ids": torch.tensor(ids),
            "labels": torch.tensor(labels),
            "attention_mask": torch.tensor(mask),
        }


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("torch", "transformers", "peft", "accelerate", "bitsandbytes", "lora-platform"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def template_sha256(tokenizer: Any) -> str:
    return hashlib.sha256((tokenizer.chat_template or "").encode()).hexdigest()


def new_run_dir(parent: Path, stem: str) -> Path:
    """A fresh run folder directly under `parent`: runs started in the same second get `-2`, `-3`, ..."""
    if Path(stem).name != stem or stem in (".", ".."):
        raise TrainerError(f"run folder name {stem!r} would leave {parent}")
    parent.mkdir(parents=True, exist_ok=True)
    for i in range(1, 1000):
        path = parent / (stem if i == 1 else f"{stem}-{i}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise TrainerError(f"{parent}: too many runs named {stem}")


class LoRARecipe:
    """setup() loads data, tokenizer and model; train() fits; evaluate(); save() writes the run."""

    def __init__(
        self, config: TrainConfig, console: Console | None = None, registry: str | None = None
    ) -> None:
        self.config = config
        self.registry = registry
        """Registry location `init_adapter` is read from (None: the default registry)."""
        self.parent: dict[str, Any] | None = None
        self.console = console or Console(stderr=True)
        self.started = time.monotonic()

    # -- setup ---------------------------------------------------------------------------
    def setup(self) -> None:
        c = self.config
        self.splits, self.report = prepare(
            c.data.path,
            test_spec=c.data.test_path,
            val_fraction=c.data.val_fraction,
            test_fraction=c.data.test_fraction,
            do_dedup=c.data.dedup,
            drop_leaked=c.data.drop_leaked,
        )
        self.base = resolve_base_model(c.base_model)
        self.tokenizer = load_tokenizer(self.base)
        self.train_rows = self._encode(self.splits["train"], count_truncated=True)
        if c.data.packing:
            self.train_rows = pack(self.train_rows, c.data.max_seq_len)
        self.val_rows = self._encode(self.splits["val"])
        model = load_base(self.base, c.training.dtype, c.lora.quantize)
        import torch

        torch.manual_seed(c.training.seed)
        init_from = self._init_adapter() if c.init_adapter else None
        self.model = apply_lora(model, c.lora, c.training.gradient_checkpointing, init_from)
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        self.run_dir = new_run_dir(Path(c.output_dir), c.run_dir_stem(stamp))

    def _init_adapter(self) -> Path:
        """The folder of the version to continue from, after checking it is of this base model."""
        from registry.errors import RegistryError
        from registry.store import Registry

        assert self.config.init_adapter is not None
        registry = Registry(self.registry)
        try:
            version = registry.get(self.config.init_adapter)
        except RegistryError as exc:
            raise TrainerError(f"init_adapter: {exc}") from exc
        finally:
            registry.close()
        if version.base_sha256 != self.base.weights_sha256:
            raise TrainerError(
                f"init_adapter: {version.ref} was trained on {version.base_model} "
                f"(weights sha256 {version.base_sha256[:12]}...), this run's base is {self.base.id} "
                f"({self.base.weights_sha256[:12]}...); continue from a version of the same base model"
            )
        self.parent = {
            "ref": version.ref,
            "name": version.name,
            "version": version.version,
            "manifest_sha256": version.manifest_sha256,
        }
        return version.path

    def _encode(self, examples: list[Example], count_truncated: bool = False) -> list[Encoded]:
        rows = [encode(self.tokenizer, ex, self.config.data.max_seq_len) for ex in examples]
        if count_truncated:
            self.report.truncated = sum(r.truncated for r in rows)
        return rows

    # -- train ---------------------------------------------------------------------------
    def train(self) -> float:
        from transformers import EarlyStoppingCallback, PrinterCallback, Trainer, TrainingArguments

        t = self.config.training
        has_val = bool(self.val_rows)
        evaluating = bool(t.eval_every) and has_val
        stopping = bool(t.early_stopping_patience) and evaluating
        save_steps = t.eval_every if stopping else t.save_every
        args = TrainingArguments(
            output_dir=str(self.run_dir / "checkpoints"),
            max_steps=t.max_steps if t.max_steps > 0 else -1,
            num_train_epochs=t.epochs,
            per_device_train_batch_size=t.batch_size,
            per_device_eval_batch_size=t.batch_size,
            gradient_accumulation_steps=t.grad_accum,
            learning_rate=t.lr,
            lr_scheduler_type="cosine",
            warmup_steps=t.warmup_steps,
            weight_decay=t.weight_decay,
            logging_steps=1,
            eval_strategy="steps" if evaluating else "no",
            eval_steps=t.eval_every or None,
            save_strategy="steps" if save_steps else "no",
            save_steps=save_steps or 500,
            save_total_limit=3,
            load_best_model_at_end=stopping,
            metric_for_best_model="eval_loss" if stopping else None,
            greater_is_better=False if stopping else None,
            seed=t.seed,
            data_seed=t.seed,
            report_to=t.report_to or "none",
            disable_tqdm=True,
            remove_unused_columns=False,
            dataloader_num_workers=0,
            dataloader_pin_memory=False,
        )
        callbacks: list[Any] = [
            JsonlLogCallback(self.run_dir / "train_log.jsonl"),
            RichProgressCallback(self.console),
        ]
        if stopping:
            callbacks.append(EarlyStoppingCallback(early_stopping_patience=t.early_stopping_patience))
        trainer = Trainer(
            model=self.model,
            args=args,
            train_dataset=_Rows(self.train_rows),
            eval_dataset=_Rows(self.val_rows) if evaluating else None,
            data_collator=_Collator(self.tokenizer.pad_token_id),
            callbacks=callbacks,
        )
        trainer.remove_callback(PrinterCallback)
        resume = self.config.resume_checkpoint()
        start = time.monotonic()
        trainer.train(resume_from_checkpoint=resume)
        self.train_seconds = time.monotonic() - start
        val_set: Any = _Rows(self.val_rows)
        self.final_val_loss = trainer.evaluate(val_set)["eval_loss"] if has_val else None
        if self.final_val_loss is not None:
            with (self.run_dir / "train_log.jsonl").open("a") as fh:
                fh.write(
                    json.dumps({"step": trainer.state.global_step, "eval_loss": self.final_val_loss}) + "\n"
                )
        self.steps = trainer.state.global_step
        return self.train_seconds

    # -- evaluate ------------------------------------------------------------------------
    def evaluate(self) -> dict[str, EvalResult]:
        e, d = self.config.eval, self.config.data
        rows = self.splits["test"] or self.splits["val"]
        if e.max_examples:
            rows = rows[: e.max_examples]
        self.eval_rows = rows
        if not rows:
            self.results: dict[str, EvalResult] = {}
            return self.results
        self.console.print(f"[bold]evaluating[/] on {len(rows)} held-out rows (base and adapter)")
        self.results = evaluate_base_and_adapter(
            self.model,
            self.tokenizer,
            rows,
            max_seq_len=d.max_seq_len,
            max_new_tokens=e.max_new_tokens,
            batch_size=e.batch_size,
            with_base=e.compare_base,
        )
        return self.results

    # -- save ----------------------------------------------------------------------------
    def save(self) -> RunResult:
        adapter_dir = self.run_dir / "adapter"
        self.model.save_pretrained(adapter_dir, safe_serialization=True)
        metrics = {k: v.metrics for k, v in self.results.items()}
        (self.run_dir / "config.yaml").write_text(
            f"# resolved config of this run; rerun with: platform train --config {self.run_dir / 'config.yaml'}\n"
            + yaml.safe_dump(self.config.to_dict(), sort_keys=False)
        )
        (self.run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        samples = []
        with (self.run_dir / "predictions.jsonl").open("w") as fh:
            for i, ex in enumerate(self.eval_rows):
                rec = {"source": ex.source, "prompt": ex.messages[-1][1], "reference": ex.completion}
                rec.update({f"{k}_prediction": v.predictions[i] for k, v in self.results.items()})
                fh.write(json.dumps(rec) + "\n")
                samples.append(rec)
        plot_losses(self.run_dir / "train_log.jsonl", self.run_dir / "loss.png")
        (self.run_dir / HELDOUT_FILE).write_text(json.dumps(heldout_record(self.splits["test"])) + "\n")
        lineage = {
            "base_model": self.base.id,
            "base_model_sha256": self.base.weights_sha256,
            "chat_template_sha256": template_sha256(self.tokenizer),
            "dataset": {**asdict(self.report)},
            "config": self.config.to_dict(),
            "metrics": metrics,
            "training": {
                "steps": self.steps,
                "seconds": round(self.train_seconds, 1),
                "final_val_loss": self.final_val_loss,
            },
            "init_adapter": self.parent,
            "export": export_lineage(self.config.data.path),
            "libraries": library_versions(),
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        (self.run_dir / "lineage.json").write_text(json.dumps(lineage, indent=2) + "\n")
        return RunResult(
            run_dir=self.run_dir,
            adapter_dir=adapter_dir,
            base=self.base,
            data=self.report,
            metrics=metrics,
            lineage=lineage,
            train_seconds=self.train_seconds,
            total_seconds=time.monotonic() - self.started,
            samples=samples[:3],
        )


def run(config: TrainConfig, console: Console | None = None, registry: str | None = None) -> RunResult:
    """Set up, train, evaluate and save one run; `registry` is where `init_adapter` is read."""
    recipe = LoRARecipe(config, console, registry)
    if config.training.objective != "sft":
        from trainer.preference import PreferenceRecipe

        recipe = PreferenceRecipe(config, console, registry)
    recipe.setup()
    recipe.train()
    recipe.evaluate()
    return recipe.save()
