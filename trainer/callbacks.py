"""Trainer callbacks: a rich progress bar with the loss, a JSONL log, and the loss-curve PNG."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from transformers import TrainerCallback


class JsonlLogCallback(TrainerCallback):
    """Appends one JSON line per log event: step, epoch, train loss, lr, val loss."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.start = time.monotonic()

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any
    ) -> None:
        if not logs:
            return
        record = {
            "step": state.global_step,
            "epoch": state.epoch,
            "time_s": round(time.monotonic() - self.start, 2),
        }
        for key in ("loss", "learning_rate", "grad_norm"):
            if key in logs:
                record[key] = float(logs[key])
        if len(record) > 3:
            self._write(record)

    def on_evaluate(
        self, args: Any, state: Any, control: Any, metrics: dict[str, Any] | None = None, **kw: Any
    ) -> None:
        """One line per evaluation: the validation curve (eval_loss and any generation metric)."""
        if not metrics:
            return
        values = {k: float(v) for k, v in metrics.items() if k in EVAL_KEYS}
        if values:
            self._write({"step": state.global_step, "epoch": state.epoch, **values})

    def _write(self, record: dict[str, Any]) -> None:
        record.setdefault("time_s", round(time.monotonic() - self.start, 2))
        with self.path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")


EVAL_KEYS = ("eval_loss", "eval_exact_match", "eval_rougeL")
"""Evaluation metrics written to the validation curve."""


class GenerationMetricCallback(TrainerCallback):
    """Adds `eval_exact_match` and `eval_rougeL` (greedy generation on a few validation rows) to
    each evaluation's metrics, before the Trainer compares checkpoints by them."""

    def __init__(self, model: Any, tokenizer: Any, examples: list[Any], max_new_tokens: int) -> None:
        self.model, self.tokenizer, self.examples = model, tokenizer, examples
        self.max_new_tokens = max_new_tokens

    def on_evaluate(
        self, args: Any, state: Any, control: Any, metrics: dict[str, Any] | None = None, **kw: Any
    ) -> None:
        from trainer.evaluate import generate, text_metrics

        if metrics is None:
            return
        was_training = self.model.training
        predictions = generate(self.model, self.tokenizer, self.examples, self.max_new_tokens)
        scores = text_metrics(predictions, [ex.completion for ex in self.examples])
        metrics["eval_exact_match"] = scores["exact_match"]
        metrics["eval_rougeL"] = scores["rougeL"]
        if was_training:
            self.model.train()


class EstimateCallback(TrainerCallback):
    """After the first steps, prints the measured time per step and the estimated training time."""

    def __init__(self, console: Any, first_steps: int = 3) -> None:
        self.console = console
        self.first_steps = first_steps
        self.started: float | None = None
        self.seconds_per_step: float | None = None

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        # the first step is timed apart: it pays for allocations and one-off kernel selection
        if self.started is None:
            self.started, self.from_step = time.monotonic(), state.global_step
            return
        done = state.global_step - self.from_step
        if self.seconds_per_step is None and (
            done >= self.first_steps or state.global_step == state.max_steps
        ):
            self.seconds_per_step = (time.monotonic() - self.started) / max(done, 1)
            left = (state.max_steps - state.global_step) * self.seconds_per_step
            if left <= 0:
                return
            self.console.print(
                f"[dim]first steps: {self.seconds_per_step:.2f} s/step; about {_duration(left)} of training "
                f"left for {state.max_steps - state.global_step} steps (evaluations not included)[/]"
            )


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


OVERFIT_RISE = 0.02
"""Validation loss this much (relative) above its best counts as rising."""


def overfitting_warning(log_path: Path) -> str | None:
    """A warning when validation loss rose after its best while the training loss kept falling."""
    if not log_path.is_file():
        return None
    rows = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    val = [(r["step"], r["eval_loss"]) for r in rows if "eval_loss" in r]
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    if len(val) < 3 or not train:
        return None
    best_step, best = min(val, key=lambda v: v[1])
    last_step, last = val[-1]
    if last_step <= best_step or last < best * (1 + OVERFIT_RISE):
        return None
    before = [loss for step, loss in train if step <= best_step][-max(len(train) // 10, 1) :]
    after = [loss for step, loss in train if step > last_step - max(len(train) // 10, 1)]
    if not before or not after or sum(after) / len(after) >= sum(before) / len(before):
        return None
    return (
        f"overfitting: validation loss rose from {best:.4f} (step {best_step}) to {last:.4f} (step "
        f"{last_step}) while the training loss fell from {sum(before) / len(before):.4f} to "
        f"{sum(after) / len(after):.4f}; train fewer epochs, lower training.lr, or add rows"
    )


class RichProgressCallback(TrainerCallback):
    """One progress bar over optimizer steps showing the latest train and validation loss."""

    def __init__(self, console: Any) -> None:
        self.console = console
        self.progress: Progress | None = None
        self.task: Any = None
        self.loss = "-"
        self.val = "-"

    def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self.progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}  val {task.fields[val]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
        )
        self.progress.start()
        self.task = self.progress.add_task("train", total=state.max_steps, loss="-", val="-")

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any
    ) -> None:
        if logs and "loss" in logs:
            self.loss = f"{float(logs['loss']):.4f}"
        if logs and "eval_loss" in logs:
            self.val = f"{float(logs['eval_loss']):.4f}"
        if self.progress is not None:
            self.progress.update(self.task, loss=self.loss, val=self.val)

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=state.global_step)

    def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=state.global_step)
            self.progress.stop()
            self.progress = None


def plot_losses(log_path: Path, out: Path) -> Path | None:
    """Train and validation loss against step, as a PNG."""
    if not log_path.is_file():
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    val = [(r["step"], r["eval_loss"]) for r in rows if "eval_loss" in r]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss")
    if val:
        ax.plot(*zip(*val, strict=True), "o-", label="val loss")
    final = [(r["kept_step"] or r["step"], r["final_val_loss"]) for r in rows if "final_val_loss" in r]
    if final:
        ax.plot(*zip(*final, strict=True), "*", markersize=12, label="kept model (val loss)")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def best_checkpoint(state: Any, metric: str) -> dict[str, Any] | None:
    """The checkpoint the Trainer kept as best (`load_best_model_at_end`): its step and score."""
    path = state.best_model_checkpoint
    if not path:
        return None
    return {"step": int(Path(path).name.rsplit("-", 1)[-1]), "metric": metric, "value": state.best_metric}
