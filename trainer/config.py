"""Training configuration: typed dataclasses, loaded from YAML plus `key=value` overrides.

Every field has a docstring. `validate()` collects every problem and raises once, so a user
fixes a config in one pass. The resolved config is written next to every adapter.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ConfigDict, TypeAdapter, ValidationError

from registry.basemodels import EMBEDDED_SMOLLM2, EMBEDDED_TINY, SHORT_NAMES
from registry.errors import InvalidReferenceError
from registry.refs import check_name, parse_ref
from trainer.baseline import parse_baseline
from trainer.errors import BaselineError, ConfigError, TrainerError

CONFIGS_DIR = Path(__file__).parent / "configs"
"""The shipped configs (`trainer/configs/*.yaml`)."""


def shipped_config(name: str) -> Path:
    """The path of a shipped config by its stem, e.g. `support-tickets` (what `platform demo` trains)."""
    return CONFIGS_DIR / f"{name}.yaml"


@dataclass
class MixSource:
    """One source of `data.mix`."""

    path: str
    """JSONL file, folder, `sample:<name>` or `hf:<dataset name>`, as `data.path`."""
    weight: float = 1.0
    """Relative weight: this source's share of the training rows is weight / sum of the weights."""


@dataclass
class DataConfig:
    path: str = "sample:support-tickets"
    """JSONL file, a folder of JSONL files, `sample:<name>` for a shipped sample, or `hf:<dataset name>`."""
    mix: list[MixSource] = field(default_factory=list)
    """Several sources mixed by weight instead of `path`, e.g.
    `data.mix=[{path: sample:support-tickets, weight: 0.8}, {path: sample:general-train, weight: 0.2}]`.
    Each is split on its own; training rows are drawn by weight (seeded by `training.seed`), held-out
    rows keep their source and the evaluation reports metrics per source."""
    mix_rows: int = 0
    """Training rows `data.mix` draws in all (a source repeats rows when its share needs more than it
    has); 0: the most rows that repeat none."""
    test_path: str | None = None
    """Optional separate held-out file; when set, no test split is carved out of `path`."""
    val_fraction: float = 0.05
    """Share of rows (by hash bucket of the prompt) used for validation loss."""
    test_fraction: float = 0.12
    """Share of rows (by hash bucket of the prompt) held out for the final evaluation."""
    max_seq_len: int = 1024
    """Longest row (prompt + completion tokens, chat template included) trained on; see `overlong`."""
    overlong: str = "drop"
    """Rows longer than max_seq_len: `drop` (counted in the plan), `truncate` (the prompt is cut from the
    left; the completion and its end-of-turn are kept; a row whose completion alone does not fit is
    dropped and counted) or `error` (the run stops and names the rows)."""
    packing: bool = False
    """Pack whole rows into `max_seq_len` blocks; position ids restart per row and attention stays
    inside each row (block-diagonal), so packed rows never see each other."""
    dedup: bool = True
    """Drop exact duplicates (same prompt and completion after whitespace cleaning)."""
    drop_leaked: bool = True
    """Drop held-out rows whose prompt also appears in the training split."""
    # -- data hygiene (trainer/hygiene.py) --
    redact: bool = False
    """Mask personal data (e-mail addresses, numbers of 4+ digits: the payload redactor's patterns)
    in every row before training; the counts per kind are reported either way."""
    near_duplicate_threshold: float = 0.8
    """Report row pairs whose word-3-gram Jaccard similarity (MinHash estimate) reaches this (0: off)."""
    near_duplicate_max_rows: int = 20_000
    """Most training rows (and most held-out rows) the near-duplicate check MinHashes; a larger split is
    checked on an even sample of this many rows (about 60 MB of signatures), and the report says so."""


@dataclass
class LoraSettings:
    r: int = 16
    """LoRA rank."""
    alpha: int = 32
    """LoRA scaling numerator (scale = alpha / r)."""
    dropout: float = 0.0
    """Dropout on the LoRA input."""
    target_modules: list[str] | str = "all-linear"
    """Module names (e.g. [q_proj, v_proj]) or `all-linear`."""
    quantize: str | None = None
    """`nf4` for QLoRA (4-bit NF4, double quantization, bitsandbytes); None for plain LoRA."""


@dataclass
class TrainingSettings:
    epochs: float = 2.0
    """Passes over the training split."""
    max_steps: int = 0
    """Optimizer steps; overrides `epochs` when > 0."""
    batch_size: int = 8
    """Rows (or packed blocks) per device batch."""
    grad_accum: int = 2
    """Gradient accumulation steps (effective batch = batch_size x grad_accum x devices)."""
    lr: float = 2e-4
    """Peak learning rate; 1e-4 to 3e-4 is the usual range for LoRA."""
    lr_scheduler: str = "cosine"
    """Learning-rate schedule after warm-up: cosine, linear, constant, constant_with_warmup,
    cosine_with_restarts or polynomial."""
    warmup_ratio: float = 0.03
    """Share of the optimizer steps spent warming the learning rate up linearly."""
    warmup_steps: int = 0
    """Warm-up steps; overrides `warmup_ratio` when > 0."""
    optimizer: str = "adamw_torch"
    """adamw_torch, adamw_torch_fused, adafactor, sgd, or bitsandbytes' `adamw_8bit` (CPU or CUDA),
    `paged_adamw_8bit`, `paged_adamw_32bit` (CUDA only), which keep less optimizer state in memory."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm (0: no clipping)."""
    precision: str = "auto"
    """Mixed precision by autocast: `auto` (bf16 where the GPU or CPU has bf16 instructions, fp16 with loss
    scaling on older GPUs, fp32 otherwise), `bf16`, `fp16` (CUDA only) or `fp32`."""
    dtype: str = "fp32"
    """`fp32` or `bf16` for the weights of the loaded base model (autocast is `precision`)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (non-reentrant): less memory, about 30% more compute."""
    strategy: str = "auto"
    """How a run launched on several processes (torchrun, accelerate launch) shares the work: `auto`
    (DDP when launched on several, else one process), `ddp` (each process holds the model, gradients
    are averaged; gloo on CPU), `fsdp` (parameters, gradients and optimizer state sharded; CUDA) or
    `deepspeed` (ZeRO; CUDA and the deepspeed package). See docs/scaling-out.md."""
    strategy_config: str | None = None
    """fsdp/deepspeed settings: a shipped preset (`fsdp-lora`, `fsdp-qlora`, `zero2`, `zero3`, in
    trainer/configs/strategies/) or a JSON file; unset: fsdp-lora (fsdp-qlora with lora.quantize)
    for fsdp, zero2 for deepspeed."""
    eval_every: int | None = None
    """Validation loss every N steps; null: about 10 evaluations over the run; 0: only at the end."""
    best_metric: str = "val_loss"
    """Which evaluation picks the checkpoint kept: `val_loss`, or `exact_match` / `rougeL` by greedy
    generation on `metric_examples` validation rows (slower)."""
    metric_examples: int = 32
    """Validation rows generated on for `best_metric` exact_match / rougeL."""
    keep_best: bool = True
    """Keep the checkpoint with the best `best_metric` (needs evaluations) instead of the last one."""
    early_stopping_patience: int = 0
    """Stop after N evaluations without improvement of `best_metric` (0: off)."""
    save_every: int = 0
    """Checkpoint every N steps (0: only the checkpoints that evaluations keep)."""
    resume: str | None = None
    """Checkpoint folder to resume from, or `last`."""
    report_to: list[str] = field(default_factory=list)
    """Extra loggers when installed: tensorboard, wandb (kept for old configs: same as `tracking`)."""
    # -- experiment tracking (trainer/tracking.py) --
    tracking: list[str] = field(default_factory=list)
    """Experiment trackers: mlflow, tensorboard, wandb (offline unless WANDB_MODE says otherwise), or none."""
    tracking_uri: str | None = None
    """MLflow tracking server or store (e.g. http://127.0.0.1:5000); setting it turns mlflow on.
    Unset: MLFLOW_TRACKING_URI, else MLflow's default."""
    tracking_experiment: str | None = None
    """MLflow experiment / W&B project (default: the adapter name)."""
    seed: int = 42
    """Seed for data order, LoRA init and dropout."""
    padding_free: bool = True
    """Unpacked SFT rows: the rows of each batch are laid end to end in one sequence and attention stays
    inside each row (TRL's `padding_free`; trainer/packing.py), so no compute goes to padding and a
    batch holds the same rows as a padded one (the same loss). Off: rows padded to the batch's
    longest. A model whose attention is not one of transformers' swappable implementations pads."""
    group_by_length: bool = False
    """Padded rows (`padding_free=false`): batches of rows of similar length (rows of a random group of
    50 batches sorted by length and cut into batches; the batches then in random order,
    trainer/sampling.py), so less of a batch is padding, at the price of less random batches.
    Off: plain random batches. Padding-free batches and packed blocks ignore it."""
    objective: str = "sft"
    """`sft` (chat rows), `dpo` (preference pairs: prompt, chosen, rejected) or `kto` (prompt,
    completion, label), the latter two through TRL; `platform data export --pairs/--unpaired` writes them."""
    beta: float = 0.1
    """DPO/KTO: how far the policy may move from the reference (higher: closer)."""
    rpo_alpha: float = 0.0
    """DPO: weight of a negative log-likelihood term on the chosen answer beside the DPO loss (RPO;
    TRL's `loss_type=["sigmoid", "sft"]`). 0: plain DPO. 1.0 keeps the policy producing the chosen
    answers instead of only moving away from the rejected ones (see docs/training.md)."""


LR_SCHEDULERS = ("cosine", "linear", "constant", "constant_with_warmup", "cosine_with_restarts", "polynomial")
"""Schedules of `transformers.get_scheduler` that need no extra arguments."""
OPTIMIZERS = (
    "adamw_torch",
    "adamw_torch_fused",
    "adafactor",
    "sgd",
    "adamw_8bit",
    "paged_adamw_8bit",
    "paged_adamw_32bit",
)
"""`TrainingArguments.optim` names offered; the last three are bitsandbytes'."""
BEST_METRICS = ("val_loss", "exact_match", "rougeL")


@dataclass
class EvalSettings:
    max_examples: int = 50
    """Held-out rows evaluated by generation (0: all)."""
    max_new_tokens: int = 48
    """Generation budget per example."""
    batch_size: int = 16
    """Generation batch size."""
    compare_base: bool = True
    """Also evaluate the base model: on the same rows (bare, and prompted as `baseline` says) and,
    with the adapter, on the general-capability set (false: neither; the adapter alone is scored)."""
    baseline: str = "few_shot"
    """The prompted base the adapter must beat: `few_shot` (as many training examples in the prompt
    as fit data.max_seq_len, at most 8), `few_shot:K`, `system:FILE` (a system prompt from a text
    file) or `zero_shot` (only the bare base). The K used is recorded in the lineage."""
    general_max_examples: int = 50
    """Items of the shipped general-capability set (300: instruction following, formatting,
    arithmetic, reading, knowledge) scored by exact match for base and adapter, to see what
    fine-tuning made the model forget; recorded as the `general` metric (0: skip)."""


@dataclass
class TrainConfig:
    base_model: str = "embedded/smollm2-135m-instruct-q4_1"
    """Base model: `embedded/...` (offline), a local folder, or a Hub id (needs internet)."""
    name: str = "support"
    """Adapter name in the registry (and folder name under output_dir)."""
    output_dir: str = "runs"
    """Where run folders (adapter, logs, plots, checkpoints) are written."""
    data: DataConfig = field(default_factory=DataConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    training: TrainingSettings = field(default_factory=TrainingSettings)
    eval: EvalSettings = field(default_factory=EvalSettings)
    init_adapter: str | None = None
    """Registry reference (name@3, name:prod) of a version to continue from: training starts from
    its weights instead of a fresh LoRA. Same base model, lora.r and lora.target_modules required."""
    response_format: str | None = None
    """The output format of a JSON task: a JSON file holding a JSON schema (or an OpenAI
    `response_format` object), or `sample:contact-json` for the shipped sample's schema. The
    published version carries it as its default response format: the server constrains requests
    that name none to it, so `model="contact:prod"` answers schema-valid JSON."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def run_dir_stem(self, stamp: str) -> str:
        """The run folder's name under output_dir: `<name>-<stamp>` (name is checked, so no `/`)."""
        return f"{check_name(self.name)}-{stamp}"

    def read_response_format(self) -> dict[str, Any] | None:
        """`response_format` read and checked as an OpenAI response_format (a plain schema is
        wrapped as a strict `json_schema` named after the adapter); None when unset."""
        from registry.errors import RegistryError
        from registry.response_format import read_response_format
        from trainer.samples import schema_path

        spec = self.response_format
        if spec is None:
            return None
        path = schema_path(spec) if spec.startswith("sample:") else Path(spec).expanduser()
        try:
            return read_response_format(path, check_name(self.name))
        except (RegistryError, InvalidReferenceError) as exc:
            raise TrainerError(str(exc)) from exc

    def resume_checkpoint(self) -> str | None:
        """`training.resume` as a checkpoint folder: `last` is the newest one of an earlier run of this name."""
        resume = self.training.resume
        if not resume:
            return None
        if resume == "last":
            pattern = f"{self.name}-*/checkpoints/checkpoint-*"
            found = sorted(Path(self.output_dir).glob(pattern), key=lambda p: p.stat().st_mtime)
            if not found:
                raise TrainerError(
                    f"training.resume=last: no checkpoint under {self.output_dir}/{pattern}; "
                    "train with training.save_every=N first"
                )
            return str(found[-1])
        if not (Path(resume) / "trainer_state.json").is_file():
            raise TrainerError(
                f"training.resume: {resume} is not a checkpoint folder (no trainer_state.json)"
            )
        return resume

    def validate(self) -> None:
        """Check every field before anything loads; raise one ConfigError listing every problem."""
        problems = self._field_problems()
        problems += _location_problems(self)
        if problems:
            raise ConfigError(problems)

    def _field_problems(self) -> list[str]:
        problems: list[str] = []
        d, lo, t, e = self.data, self.lora, self.training, self.eval
        if not 0 <= d.val_fraction < 1:
            problems.append(f"data.val_fraction must be in [0, 1), got {d.val_fraction}")
        if not 0 <= d.test_fraction < 1:
            problems.append(f"data.test_fraction must be in [0, 1), got {d.test_fraction}")
        if d.val_fraction + d.test_fraction >= 0.9:
            problems.append("data.val_fraction + data.test_fraction must leave at least 10% for training")
        problems += mix_problems(self)
        if d.max_seq_len < 8:
            problems.append(f"data.max_seq_len must be >= 8, got {d.max_seq_len}")
        if lo.r < 1:
            problems.append(f"lora.r must be >= 1, got {lo.r}")
        if lo.alpha < 1:
            problems.append(f"lora.alpha must be >= 1, got {lo.alpha}")
        if not 0 <= lo.dropout < 1:
            problems.append(f"lora.dropout must be in [0, 1), got {lo.dropout}")
        if isinstance(lo.target_modules, str) and lo.target_modules != "all-linear":
            problems.append(
                f"lora.target_modules must be a list of names or 'all-linear', got {lo.target_modules!r}"
            )
        if lo.quantize not in (None, "nf4"):
            problems.append(f"lora.quantize must be 'nf4' or null, got {lo.quantize!r}")
        if t.max_steps < 0:
            problems.append(f"training.max_steps must be >= 0, got {t.max_steps}")
        if t.max_steps == 0 and t.epochs <= 0:
            problems.append("training.epochs must be > 0 when training.max_steps is 0")
        for key in ("batch_size", "grad_accum"):
            if getattr(t, key) < 1:
                problems.append(f"training.{key} must be >= 1, got {getattr(t, key)}")
        if not 0 < t.lr < 1:
            problems.append(f"training.lr must be in (0, 1), got {t.lr}")
        if t.warmup_steps < 0:
            problems.append(f"training.warmup_steps must be >= 0, got {t.warmup_steps}")
        if not 0 <= t.warmup_ratio < 1:
            problems.append(f"training.warmup_ratio must be in [0, 1), got {t.warmup_ratio}")
        if t.max_grad_norm < 0 or t.weight_decay < 0:
            problems.append("training.max_grad_norm and training.weight_decay must be >= 0")
        if d.overlong not in ("drop", "truncate", "error"):
            problems.append(f"data.overlong must be 'drop', 'truncate' or 'error', got {d.overlong!r}")
        for key, allowed in (
            ("lr_scheduler", LR_SCHEDULERS),
            ("optimizer", OPTIMIZERS),
            ("best_metric", BEST_METRICS),
            ("precision", ("auto", "bf16", "fp16", "fp32")),
            ("dtype", ("fp32", "bf16")),
        ):
            if getattr(t, key) not in allowed:
                problems.append(
                    f"training.{key} must be one of {', '.join(allowed)}; got {getattr(t, key)!r}"
                )
        if t.eval_every is not None and t.eval_every < 0:
            problems.append(f"training.eval_every must be >= 0 or null (auto), got {t.eval_every}")
        if t.early_stopping_patience < 0 or t.metric_examples < 1:
            problems.append("training.early_stopping_patience must be >= 0 and training.metric_examples >= 1")
        if t.early_stopping_patience and t.eval_every == 0:
            problems.append(
                "training.early_stopping_patience needs evaluations (training.eval_every null or > 0)"
            )
        problems += device_problems(t)
        problems += _strategy_problems(self)
        unknown = sorted(set(t.report_to) - {"tensorboard", "wandb"})
        if unknown:
            problems.append(f"training.report_to: unknown logger(s) {unknown}; known: tensorboard, wandb")
        problems += _hygiene_and_tracking_problems(self)
        if t.objective not in ("sft", "dpo", "kto"):
            problems.append(f"training.objective must be sft, dpo or kto, got {t.objective!r}")
        elif t.objective != "sft" and self.data.packing:
            problems.append(f"data.packing is for SFT rows; training.objective={t.objective} pads its pairs")
        if not 0 < t.beta <= 10:
            problems.append(f"training.beta must be in (0, 10], got {t.beta}")
        if t.rpo_alpha < 0 or (t.rpo_alpha and t.objective != "dpo"):
            problems.append(
                f"training.rpo_alpha must be >= 0 and is for training.objective=dpo, got {t.rpo_alpha}"
            )
        if e.max_examples < 0 or e.max_new_tokens < 1 or e.batch_size < 1 or e.general_max_examples < 0:
            problems.append(
                "eval.max_examples and eval.general_max_examples must be >= 0, "
                "eval.max_new_tokens and eval.batch_size >= 1"
            )
        try:
            parse_baseline(e.baseline)
        except BaselineError as exc:
            problems.append(f"eval.baseline: {exc}")
        return problems


def mix_problems(config: TrainConfig) -> list[str]:
    """`data.mix`: positive weights, distinct paths, no separate test file, SFT only."""
    d = config.data
    if not d.mix:
        return [f"data.mix_rows needs data.mix, got {d.mix_rows}"] if d.mix_rows else []
    problems = [
        f"data.mix[{i}].weight must be > 0, got {s.weight}" for i, s in enumerate(d.mix) if not s.weight > 0
    ]
    paths = [s.path for s in d.mix]
    if len(set(paths)) < len(paths):
        problems.append(f"data.mix: a path is listed twice ({', '.join(paths)}); give each source once")
    if d.mix_rows < 0:
        problems.append(f"data.mix_rows must be >= 0, got {d.mix_rows}")
    if d.test_path:
        problems.append("data.test_path cannot be used with data.mix: each source's test split is held out")
    if config.training.objective != "sft":
        problems.append(f"data.mix mixes SFT rows; training.objective={config.training.objective} is not sft")
    return problems


def device_problems(t: TrainingSettings) -> list[str]:
    """Optimizer and precision choices this machine cannot run (bitsandbytes, CUDA)."""
    from trainer.hardware import bitsandbytes_problem, has_cuda

    problems = []
    if t.optimizer in ("adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit"):
        problem = bitsandbytes_problem()
        if problem:
            problems.append(
                f"training.optimizer={t.optimizer} needs bitsandbytes: {problem}; use adamw_torch"
            )
        elif t.optimizer.startswith("paged_") and not has_cuda():
            problems.append(
                f"training.optimizer={t.optimizer}: paged optimizers need a CUDA GPU "
                "(bitsandbytes pages optimizer state to host memory); use adamw_8bit on a CPU"
            )
    if t.precision == "fp16" and not has_cuda():
        problems.append("training.precision=fp16 needs a CUDA GPU (loss scaling); use bf16, fp32 or auto")
    return problems


def _strategy_problems(config: TrainConfig) -> list[str]:
    import os

    from trainer import strategy
    from trainer.hardware import has_cuda

    return strategy.problems(config, int(os.environ.get("WORLD_SIZE", "1")), has_cuda())


def _hygiene_and_tracking_problems(config: TrainConfig) -> list[str]:
    from trainer.tracking import TRACKERS

    problems = []
    unknown = sorted(set(config.training.tracking) - {*TRACKERS, "none"})
    if unknown:
        problems.append(
            f"training.tracking: unknown tracker(s) {unknown}; known: {', '.join(TRACKERS)}, none"
        )
    if not 0 <= config.data.near_duplicate_threshold < 1:
        problems.append(
            f"data.near_duplicate_threshold must be in [0, 1), got {config.data.near_duplicate_threshold}"
        )
    if config.data.near_duplicate_max_rows < 1:
        problems.append(
            f"data.near_duplicate_max_rows must be at least 1, got {config.data.near_duplicate_max_rows}"
        )
    return problems


def _location_problems(config: TrainConfig) -> list[str]:
    """Names, paths and models that the run would otherwise reject only after loading or training."""
    problems: list[str] = []
    try:
        check_name(config.name)
    except InvalidReferenceError as exc:
        problems.append(f"name: {exc} (it names the registry entry and the run folder)")
    else:  # `last` globs for earlier runs of this name, so only once the name is safe
        try:
            config.resume_checkpoint()
        except TrainerError as exc:
            problems.append(str(exc))
    if not config.output_dir.strip():
        problems.append("output_dir must not be empty")
    specs = [("data.path", config.data.path), ("data.test_path", config.data.test_path)]
    if config.data.mix:  # then `path` is not read
        specs = [(f"data.mix[{i}].path", s.path) for i, s in enumerate(config.data.mix)]
    for key, spec in specs:
        problem = _data_problem(spec)
        if problem:
            problems.append(f"{key}: {problem}")
    if config.init_adapter is not None:
        try:
            parse_ref(config.init_adapter)
        except InvalidReferenceError as exc:
            problems.append(f"init_adapter: {exc}")
    problem = _base_model_problem(config.base_model)
    if problem:
        problems.append(f"base_model: {problem}")
    if config.response_format is not None:
        try:
            config.read_response_format()
        except TrainerError as exc:
            problems.append(f"response_format: {exc}")
    return problems


def _data_problem(spec: str | None) -> str | None:
    if spec is None or spec.startswith("hf:"):
        return None
    if spec.startswith("sample:"):
        from trainer.samples import PREFERENCE_SAMPLES, SAMPLES

        name = spec.split(":", 1)[1]
        known = sorted({*SAMPLES, *PREFERENCE_SAMPLES})
        return None if name in known else f"unknown sample {name!r}; known: {', '.join(known)}"
    if not Path(spec).expanduser().exists():
        return f"{spec}: no such file or folder (use a .jsonl path, a folder, sample:<name> or hf:<name>)"
    return None


def _base_model_problem(name: str) -> str | None:
    name = SHORT_NAMES.get(name, name)
    if name.startswith("embedded/") and name not in (EMBEDDED_SMOLLM2, EMBEDDED_TINY):
        known = ", ".join(sorted([EMBEDDED_SMOLLM2, EMBEDDED_TINY]))
        return f"unknown embedded base model {name!r}; known: {known}"
    if name.startswith(("/", ".", "~")) and not Path(name).expanduser().is_dir():
        return f"{name}: no such folder"
    return None


def _set_field(obj: Any, path: list[str], raw: Any, key: str, problems: list[str]) -> None:
    names = {f.name: f for f in dataclasses.fields(obj)}
    head = path[0]
    if head not in names:
        problems.append(f"{key}: unknown field {head!r}; known: {', '.join(sorted(names))}")
        return
    current = getattr(obj, head)
    if dataclasses.is_dataclass(current):
        if len(path) == 1:
            if not isinstance(raw, dict):
                problems.append(f"{key}: expected a mapping of fields")
                return
            for sub, value in raw.items():
                _set_field(current, [str(sub)], value, f"{key}.{sub}", problems)
        else:
            _set_field(current, path[1:], raw, key, problems)
        return
    if len(path) > 1:
        problems.append(f"{key}: {head!r} has no sub-fields")
        return
    value = _coerce(raw, typing.get_type_hints(type(obj))[head])
    if value is _BAD:
        problems.append(f"{key}: expected {names[head].type}, got {raw!r}")
        return
    setattr(obj, head, value)


_BAD = object()
_LAX = ConfigDict(coerce_numbers_to_str=True)


@functools.cache
def _adapter(annotation: Any) -> TypeAdapter[Any]:
    return TypeAdapter(annotation, config=_LAX)


def _coerce(raw: Any, annotation: Any) -> Any:
    """`raw` as a value of `annotation` by pydantic's validation, or _BAD.

    Strict first; text (from YAML or the command line) may then be parsed (`5e-4` as a float),
    but a boolean never passes for a number or a string. `a,b` is tried as a list first.
    """
    adapter = _adapter(annotation)
    candidates: list[Any] = [raw]
    if isinstance(raw, str):
        items = [s.strip() for s in raw.split(",") if s.strip()]
        candidates = [items, raw] if "," in raw else [raw, items]
    for candidate in candidates:
        try:
            return adapter.validate_python(candidate, strict=True)
        except ValidationError:
            pass
        if isinstance(candidate, bool):
            continue
        try:
            return adapter.validate_python(candidate)
        except ValidationError:
            pass
    return _BAD


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Build a config from an optional YAML file and `a.b=value` overrides, then validate it."""
    config = TrainConfig()
    problems: list[str] = []
    source = "config"
    if path is not None:
        source = str(path)
        try:
            raw = yaml.safe_load(Path(path).read_text()) or {}
        except OSError as exc:
            raise ConfigError([f"cannot read: {exc.strerror}"], source) from exc
        except yaml.YAMLError as exc:
            raise ConfigError([f"invalid YAML: {exc}"], source) from exc
        if not isinstance(raw, dict):
            raise ConfigError(["top level must be a mapping of fields"], source)
        for key, value in raw.items():
            _set_field(config, [str(key)], value, str(key), problems)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            problems.append(f"override {item!r}: expected key=value, e.g. training.max_steps=50")
            continue
        try:
            value = yaml.safe_load(text) if text else ""
        except yaml.YAMLError:
            value = text
        _set_field(config, key.strip().split("."), value, key.strip(), problems)
    if problems:
        raise ConfigError(problems, source)
    try:
        config.validate()
    except ConfigError as exc:
        raise ConfigError(exc.problems, source) from None
    return config
