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
        for key in ("loss", "learning_rate", "eval_loss", "grad_norm"):
            if key in logs:
                record[key] = float(logs[key])
        if len(record) > 3:
            with self.path.open("a") as fh:
                fh.write(json.dumps(record) + "\n")


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
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out
