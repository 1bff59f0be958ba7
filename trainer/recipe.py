"""The LoRA fine-tuning recipe: setup -> train -> evaluate -> save, one readable class.

Training runs through the Hugging Face Trainer. Under `torchrun`/`accelerate launch` (any launcher
that sets RANK/WORLD_SIZE/LOCAL_RANK) every process runs this recipe with its `Dist`
(trainer/distributed.py): rank 0 prepares the data and creates the run folder and hands both to the
others, training is data-parallel (DDP, or `training.strategy`), the held-out evaluation is sharded
across the ranks and gathered on rank 0, and rank 0 alone saves. Adapters are saved as safetensors only.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

from registry.basemodels import BaseModel, resolve_base_model
from registry.response_format import RESPONSE_FORMAT
from trainer import strategy
from trainer.arguments import training_arguments
from trainer.baseline import Prompting
from trainer.baseline import record as baseline_record
from trainer.callbacks import (
    EstimateCallback,
    GenerationMetricCallback,
    JsonlLogCallback,
    RichProgressCallback,
    best_checkpoint,
    overfitting_warning,
    plot_losses,
)
from trainer.config import TrainConfig
from trainer.cpu_bf16 import bf16_base_matmuls
from trainer.data import DataReport, Example
from trainer.distributed import Dist
from trainer.errors import DataError, TrainerError
from trainer.evaluate import EvalResult
from trainer.export import HELDOUT_FILE, export_lineage, heldout_record
from trainer.general import record as general_record
from trainer.hardware import cpu_bf16, device_summary, resolve_precision
from trainer.hygiene import HygieneReport, Splits
from trainer.hygiene import check as hygiene_check
from trainer.lineage import library_versions, training_record
from trainer.mix import MixReport, prepare_data
from trainer.mix import summary as mix_summary
from trainer.model import apply_lora, load_base, load_tokenizer, without_kv_cache
from trainer.packing import Collator, RowDataset, dataset, takes_completion_logits, use_row_attention
from trainer.plan import Plan, make_plan
from trainer.recipe_eval import RecipeEvaluation
from trainer.template import Encoded, encode, fit_rows, pack
from trainer.tracking import Tracking


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


def template_sha256(tokenizer: Any) -> str:
    return hashlib.sha256((tokenizer.chat_template or "").encode()).hexdigest()


def new_run_dir(parent: Path, stem: str, reuse: bool = False) -> Path:
    """A fresh run folder directly under `parent`: runs started in the same second get `-2`, `-3`, ...
    With `reuse`, the folder `stem` itself, kept if it exists (a restarted run's)."""
    if Path(stem).name != stem or stem in (".", ".."):
        raise TrainerError(f"run folder name {stem!r} would leave {parent}")
    parent.mkdir(parents=True, exist_ok=True)
    if reuse:
        (parent / stem).mkdir(exist_ok=True)
        return parent / stem
    for i in range(1, 1000):
        path = parent / (stem if i == 1 else f"{stem}-{i}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise TrainerError(f"{parent}: too many runs named {stem}")


class LoRARecipe(RecipeEvaluation):
    """setup() loads data, tokenizer and model; train() fits; evaluate(); save() writes the run."""

    def __init__(
        self,
        config: TrainConfig,
        console: Console | None = None,
        registry: str | None = None,
        dist: Dist | None = None,
    ) -> None:
        self.config = config
        self.dist = dist or Dist()
        """This process's rank in a distributed run (one process of one by default)."""
        self.registry = registry
        """Registry location `init_adapter` is read from (None: the default registry)."""
        self.parent: dict[str, Any] | None = None
        self.console = console or Console(stderr=True)
        self.started = time.monotonic()
        self.plan: Plan | None = None
        """Set by setup_data; recipes with their own setup (trainer/preference.py) have none."""
        self.best: dict[str, Any] | None = None
        self.padding_free = False
        """Whether training batches are padding-free (set by setup: `training.padding_free` where the
        model's attention can be swapped)."""
        self.warnings: list[str] = []
        self.tracking: Tracking | None = None
        self.trained: dict[str, Any] = {}
        """trainer.lineage.training_record of the finished training."""
        self.hygiene: HygieneReport | None = None
        self.mix: MixReport | None = None
        """What `data.mix` drew from each source (None without a mix)."""
        self.extra_callbacks: list[Any] = []
        """Trainer callbacks a launcher adds (Ray Train's checkpoint reports: trainer/ray_worker.py)."""
        self.resume_from: str | None = None
        """A checkpoint folder a launcher resumes from (Ray Train's latest); else `training.resume`."""
        self.launcher: dict[str, Any] = {}
        """What a launcher adds to the lineage's `distributed` record (Ray Train: `launcher`, `ray`)."""
        self.run_name: str | None = None
        """A launcher's name for the run folder, the same folder again when the launcher restarts the
        run (Ray Train: its run name); else a fresh `<name>-<time>` folder."""
        self.results: dict[str, EvalResult] = {}
        self.prompting: Prompting | None = None
        """The prompted baseline evaluate() used (None: eval.baseline=zero_shot or no base compared)."""
        self.general: dict[str, dict[str, float]] = {}
        """General-set scores per side (`base`, `adapter`), empty when eval.general_max_examples=0."""
        self.general_items = 0
        self.train_lengths: list[int] = []
        """Tokens of each training row (set by setup_data; the few-shot baseline fits its shots by them)."""

    @contextlib.contextmanager
    def tracked(self) -> Iterator[None]:
        """Marks the tracking run (rank 0's) failed when the block raises."""
        try:
            yield
        except BaseException:
            if self.tracking is not None:
                self.tracking.fail()
            raise

    # -- setup ---------------------------------------------------------------------------
    def setup(self) -> None:
        """Data and plan (`setup_data`), then the model with its LoRA, then the run folder."""
        c = self.config
        self.setup_data()
        # packed blocks need an attention that honours restarting position ids (trainer/packing.py)
        attention = "sdpa" if c.data.packing else None
        fsdp = strategy.resolved(c, self.dist.world_size) == "fsdp"
        model = load_base(self.base, c.training.dtype, c.lora.quantize, attention, fsdp=fsdp)
        self.padding_free = (
            c.training.padding_free
            and c.training.objective == "sft"
            and not c.data.packing
            and use_row_attention(model)
        )
        import torch

        torch.manual_seed(c.training.seed)
        init_from = self._init_adapter() if c.init_adapter else None
        self.model = apply_lora(model, c.lora, c.training.gradient_checkpointing, init_from)
        self.make_run_dir()

    def make_run_dir(self, tracking: bool = True) -> None:
        """The run folder (created by rank 0, the same path on every rank) and, on rank 0, tracking."""
        c = self.config
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        self.run_dir = self.dist.on_main(
            lambda: new_run_dir(
                Path(c.output_dir), self.run_name or c.run_dir_stem(stamp), self.run_name is not None
            )
        )
        self.tracking = Tracking(c, self.run_dir) if tracking and self.dist.is_main else None

    def setup_data(self) -> None:
        """Rows, tokenizer, encoded rows and the plan: all `platform train --dry-run` needs.
        Rank 0 reads, splits and checks the rows; the other ranks receive its result."""
        c = self.config
        self.splits, self.report, self.hygiene, self.mix = self.dist.on_main(self._prepare)
        self.base = resolve_base_model(c.base_model)
        self.tokenizer = load_tokenizer(self.base)
        self._encode_training_rows()
        self.val_rows = self._encode(self.splits["val"])
        self.plan = make_plan(
            c,
            rows={"train": len(self.train_rows), "val": len(self.val_rows), "test": len(self.splits["test"])},
            lengths=self.train_lengths,
            dropped=self.report.overlong_dropped,
            truncated=self.report.truncated,
            items=len(self.train_items),
            world_size=self.dist.world_size,
            precision=resolve_precision(c.training.precision),
            device=device_summary(),
        )

    def _prepare(self) -> tuple[Splits, DataReport, HygieneReport, MixReport | None]:
        """The split rows (streamed to Arrow files, trainer.rowstore) of `data.path` or of the
        `data.mix` sources, their report, then the hygiene check."""
        splits, report, mix = prepare_data(self.config.data, self.config.training.seed)
        if mix is not None:
            self.console.print(f"[bold]data mix[/]: {mix_summary(mix)}")
        splits, hygiene = self._hygiene(splits)
        return splits, report, hygiene, mix

    def _hygiene(self, splits: Splits) -> tuple[Splits, HygieneReport]:
        """Personal data counted (and masked with data.redact) and near-duplicates reported."""
        d = self.config.data
        splits, report = hygiene_check(
            splits,
            redact_pii=d.redact,
            threshold=d.near_duplicate_threshold,
            max_rows=d.near_duplicate_max_rows,
        )
        self.console.print(f"[bold]data hygiene[/]: {report.summary()}")
        return splits, report

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

    def _encode_training_rows(self) -> None:
        """Encode the training split, apply `data.overlong`, pack when asked."""
        d = self.config.data
        examples = self.splits["train"]
        encoded = self._encode(examples)
        fitted = fit_rows(encoded, examples, d.overlong, d.max_seq_len, self.report.source)
        if not fitted.rows:
            raise DataError(
                [
                    f"every training row is longer than data.max_seq_len={d.max_seq_len}; raise it, "
                    "or set data.overlong=truncate (the start of long prompts is cut)"
                ],
                self.report.source,
            )
        self.report.truncated, self.report.overlong_dropped = fitted.truncated, fitted.dropped
        self.train_lengths = [r.length for r in encoded]
        self.train_rows = fitted.rows
        self.train_items: list[Any] = pack(fitted.rows, d.max_seq_len) if d.packing else fitted.rows

    def _encode(self, examples: Sequence[Example]) -> list[Encoded]:
        return [encode(self.tokenizer, ex, self.config.data.max_seq_len) for ex in examples]

    # -- train ---------------------------------------------------------------------------
    def train(self) -> float:
        from transformers import EarlyStoppingCallback, PrinterCallback

        from trainer.sampling import GroupedTrainer, row_lengths

        t, plan = self.config.training, self.plan
        assert plan is not None, "setup() first"
        self.print_plan()
        log = self.run_dir / "train_log.jsonl"
        estimate = EstimateCallback(self.console)
        callbacks: list[Any] = []
        if plan.eval_every and t.best_metric != "val_loss":
            subset = list(self.splits["val"][: t.metric_examples])
            callbacks.append(
                GenerationMetricCallback(self.model, self.tokenizer, subset, self.config.eval.max_new_tokens)
            )
        if self.dist.is_main:  # one log, one progress bar, one tracking run
            callbacks += [JsonlLogCallback(log), RichProgressCallback(self.console)]
        callbacks.append(estimate)
        if t.early_stopping_patience and plan.eval_every:
            callbacks.append(EarlyStoppingCallback(early_stopping_patience=t.early_stopping_patience))
        if self.tracking is not None:
            self.tracking.start()
            callbacks += self.tracking.callbacks()
        callbacks += self.extra_callbacks
        padded = not (self.config.data.packing or self.padding_free)
        trainer = GroupedTrainer(
            model=self.model,
            args=training_arguments(
                t,
                plan,
                self.run_dir / "checkpoints",
                strategy.trainer_arguments(self.config),
                padded=padded,
            ),
            train_dataset=dataset(self.train_items, self.config.data.packing),
            eval_dataset=RowDataset(self.val_rows) if plan.eval_every else None,
            data_collator=Collator(
                self.tokenizer.pad_token_id, takes_completion_logits(self.model), self.padding_free
            ),
            callbacks=callbacks,
            lengths=row_lengths(self.train_items, t.group_by_length, padded),
        )
        trainer.remove_callback(PrinterCallback)
        resume = self.resume_from or self.config.resume_checkpoint()
        start = time.monotonic()
        with without_kv_cache(self.model), self._base_matmuls():
            trainer.train(resume_from_checkpoint=resume)
        self.train_seconds = time.monotonic() - start
        self.trained = training_record(trainer, self.train_seconds)
        plan.seconds_per_step = estimate.seconds_per_step
        self.steps = trainer.state.global_step
        self.best = (
            best_checkpoint(trainer.state, t.best_metric) if trainer.args.load_best_model_at_end else None
        )
        self.warnings = [*plan.warnings]
        overfit = overfitting_warning(log) if self.dist.is_main else None
        if overfit:
            self.warnings.append(overfit)
            self.console.print(f"[yellow]warning:[/] {overfit}")
        self.final_val_loss = self._final_val_loss(trainer, log)
        self._gather_sharded_weights(trainer)
        return self.train_seconds

    def _base_matmuls(self) -> contextlib.AbstractContextManager[Any]:
        """bf16 on a CPU: the frozen base's matmuls in bf16, the rest fp32 (trainer/cpu_bf16.py)."""
        if cpu_bf16(resolve_precision(self.config.training.precision)):
            return bf16_base_matmuls(self.model)
        return contextlib.nullcontext()

    def _gather_sharded_weights(self, trainer: Any) -> None:
        """After fsdp/deepspeed training each rank may hold only a shard of the weights: the full
        state is gathered (accelerate's get_state_dict, a collective), rank 0 writes the adapter,
        and every rank reloads base + adapter whole for the evaluation and the save."""
        if strategy.resolved(self.config, self.dist.world_size) not in ("fsdp", "deepspeed"):
            return
        from peft import PeftModel

        state = trainer.accelerator.get_state_dict(trainer.model_wrapped)
        adapter_dir = self.run_dir / "adapter"
        if self.dist.is_main:
            self.model.save_pretrained(adapter_dir, state_dict=state, safe_serialization=True)
        self.dist.barrier()
        del state, trainer
        c = self.config
        base = load_base(self.base, c.training.dtype, c.lora.quantize)
        self.model = PeftModel.from_pretrained(base, str(adapter_dir))

    def print_plan(self) -> None:
        assert self.plan is not None, "setup_data() first"
        self.console.print("[bold]plan[/]")
        for line in self.plan.lines():
            self.console.print(f"  {line}")
        for warning in self.plan.warnings:
            self.console.print(f"[yellow]warning:[/] {warning}")

    def _final_val_loss(self, trainer: Any, log: Path) -> float | None:
        """Validation loss of the model kept (the best checkpoint's, or the last), appended to the log."""
        if not self.val_rows:
            return None
        trainer.remove_callback(GenerationMetricCallback)
        loss = float(trainer.evaluate(RowDataset(self.val_rows), metric_key_prefix="final")["final_loss"])
        if not self.dist.is_main:
            return loss
        with log.open("a") as fh:
            record = {"step": self.steps, "final_val_loss": loss, "kept_step": (self.best or {}).get("step")}
            fh.write(json.dumps(record) + "\n")
        return loss

    # -- save ----------------------------------------------------------------------------
    def extra_metrics(self) -> dict[str, dict[str, float]]:
        """Metric groups beyond the generation metrics (a preference run's held-out rewards)."""
        return {}

    def save(self) -> RunResult:
        adapter_dir = self.run_dir / "adapter"
        self.model.save_pretrained(adapter_dir, safe_serialization=True)
        metrics = {k: v.metrics for k, v in self.results.items()} | self.extra_metrics()
        (self.run_dir / "config.yaml").write_text(
            f"# resolved config of this run; rerun with: platform train --config {self.run_dir / 'config.yaml'}\n"
            + yaml.safe_dump(self.config.to_dict(), sort_keys=False)
        )
        (self.run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        response_format = self.config.read_response_format()
        if response_format is not None:  # published as the version's default (trainer/publish.py)
            (self.run_dir / RESPONSE_FORMAT).write_text(json.dumps(response_format, indent=2) + "\n")
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
            "baseline": baseline_record(self.prompting, self.results, self.eval_rows),
            "general": general_record(self.general, self.general_items),
            "training": {
                "steps": self.steps,
                "seconds": round(self.train_seconds, 1),
                "final_val_loss": self.final_val_loss,
                "best_checkpoint": self.best,
                "warnings": self.warnings,
                # what ran in bf16: a CPU's bf16 is not trainer_arguments' (autocast) bf16
                "precision": self.plan.precision_text() if self.plan else None,
                **{k: self.trained.get(k) for k in ("tokens", "tokens_per_second", "wall_seconds", "epochs")},
            },
            "trainer_arguments": self.trained.get("arguments"),
            "hardware": self.trained.get("hardware"),
            "code_revision": self.trained.get("code_revision"),
            "data_hygiene": asdict(self.hygiene) if self.hygiene else None,
            "tracking": self.tracking.record if self.tracking else {},
            "plan": self.plan.to_dict() if self.plan else None,
            "init_adapter": self.parent,
            "distributed": strategy.lineage(self.config, self.dist.world_size) | self.launcher,
            "export": None if self.mix else export_lineage(self.config.data.path),
            "data_mix": self._mix_record(),
            "libraries": library_versions(),
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        (self.run_dir / "lineage.json").write_text(json.dumps(lineage, indent=2, default=str) + "\n")
        if self.tracking is not None:
            self.tracking.finish(metrics, samples)
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


def dry_run(config: TrainConfig, console: Console | None = None) -> Plan:
    """Load and encode the data, print the plan and its warnings; train nothing, write nothing."""
    if config.training.objective != "sft":
        raise TrainerError(
            f"--dry-run plans SFT runs; training.objective={config.training.objective} has no plan"
        )
    recipe = LoRARecipe(config, console)
    recipe.setup_data()
    recipe.print_plan()
    assert recipe.plan is not None
    return recipe.plan


def new_recipe(
    config: TrainConfig, console: Console | None = None, registry: str | None = None, dist: Dist | None = None
) -> LoRARecipe:
    """The recipe of `training.objective`: SFT here, DPO/KTO in trainer/preference.py."""
    if config.training.objective != "sft":
        from trainer.preference import PreferenceRecipe

        return PreferenceRecipe(config, console, registry, dist)
    return LoRARecipe(config, console, registry, dist)


def run(config: TrainConfig, console: Console | None = None, registry: str | None = None) -> RunResult:
    """Set up, train, evaluate and save one run in this process; `registry` is where `init_adapter`
    is read. Distributed runs go through trainer.publish.train_and_publish."""
    recipe = new_recipe(config, console, registry)
    with recipe.tracked():
        recipe.setup()
        recipe.train()
        recipe.evaluate()
        return recipe.save()
