"""What runs inside Ray Train for `platform train --workers N` (the driver: trainer/ray_launch.py).

- `train_worker`, in every worker: resume from the latest checkpoint Ray Train hands it (the
  Trainer's `resume_from_checkpoint`), run the recipe, and on rank 0 report the run's publishable
  files as the last checkpoint, `final/` (`write_final`; the driver reads it with `read_final`).
- `ReportCheckpoints`, a Trainer callback in every worker: each checkpoint the Trainer saves is
  reported to Ray Train under the same name (`checkpoint-<step>`).
- `CommittedCheckpoints`, a Ray Train callback in the controller: prints each checkpoint once every
  worker has reported it, i.e. the one a restart would resume from.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import ray.train
from rich.console import Console
from transformers import TrainerCallback

from registry.basemodels import BaseModel
from registry.store import KEEP_FILES
from trainer.data import DataReport
from trainer.errors import TrainerError
from trainer.publish import train_and_publish
from trainer.recipe import LoRARecipe, RunResult

FINAL = "final"
"""The name of the last checkpoint of a run: its publishable files, not a Trainer checkpoint."""
RUN_FILE = "run.json"
"""In the final checkpoint: what the driver needs beyond lineage.json to print and publish."""
LAUNCHER = "ray-train"
"""The lineage's `distributed.launcher` of a run on Ray Train (beside its `strategy`, e.g. ddp)."""


def is_final(checkpoint: Any) -> bool:
    return checkpoint is not None and bool(checkpoint.path.rstrip("/").endswith(f"/{FINAL}"))


def train_worker(args: dict[str, Any]) -> str | None:
    """One Ray Train worker: the rank-aware recipe (trainer.publish.train_and_publish, without its
    push), resumed from Ray Train's latest checkpoint if there is one; rank 0 then reports the
    finished run. Returns a user error's message instead of raising it (every rank meets the same
    one), so Ray does not restart a run that would fail the same way again."""
    checkpoint = ray.train.get_checkpoint()
    if is_final(checkpoint):
        return None  # restarted after the run had finished: nothing left to do
    with tempfile.TemporaryDirectory(prefix="lora-ray-") as tmp:
        resume = checkpoint.to_directory(str(Path(tmp) / "resume")) if checkpoint is not None else None
        run_name = ray.train.get_context().get_experiment_name()
        launcher = {
            "launcher": LAUNCHER,
            "ray": {
                "run": run_name,
                "resumed_from": Path(checkpoint.path).name if checkpoint is not None else None,
            },
        }

        def prepare(recipe: LoRARecipe) -> None:
            recipe.extra_callbacks.append(ReportCheckpoints())
            recipe.resume_from = resume
            recipe.launcher = launcher
            recipe.run_name = run_name  # a restart trains on in the same run folder

        try:
            result = train_and_publish(
                args["config"], Console(stderr=True), args.get("registry"), push=False, prepare=prepare
            )
        except TrainerError as exc:
            return str(exc)
        _report_final(result, Path(tmp) / FINAL)
    return None


def _report_final(result: RunResult | None, folder: Path) -> None:
    """Rank 0 reports the publishable files as the run's last checkpoint; the others report nothing."""
    if result is None:
        ray.train.report({}, checkpoint=None)
        return
    write_final(result, folder)
    metrics = {"step": int(result.lineage["training"]["steps"] or 0), "final": 1}
    ray.train.report(
        metrics, checkpoint=ray.train.Checkpoint.from_directory(str(folder)), checkpoint_dir_name=FINAL
    )


def write_final(result: RunResult, folder: Path) -> None:
    """The adapter, the records a version keeps, and run.json into `folder`."""
    folder.mkdir(parents=True)
    shutil.copytree(result.adapter_dir, folder / "adapter")
    for name in KEEP_FILES:
        if (result.run_dir / name).is_file():
            shutil.copy2(result.run_dir / name, folder / name)
    run = {
        "run_dir": str(result.run_dir),
        "base": {k: str(v) for k, v in asdict(result.base).items()},
        "train_seconds": result.train_seconds,
        "total_seconds": result.total_seconds,
        "samples": result.samples,
    }
    (folder / RUN_FILE).write_text(json.dumps(run) + "\n")


def read_final(folder: Path) -> tuple[RunResult, Path]:
    """The RunResult of a final checkpoint copied to `folder` (its files are read from there), and
    the run folder rank 0 wrote."""
    lineage = json.loads((folder / "lineage.json").read_text())
    run = json.loads((folder / RUN_FILE).read_text())
    base = run["base"]
    result = RunResult(
        run_dir=folder,
        adapter_dir=folder / "adapter",
        base=BaseModel(id=base["id"], path=Path(base["path"]), weights_sha256=base["weights_sha256"]),
        data=DataReport(**lineage["dataset"]),
        metrics=lineage["metrics"],
        lineage=lineage,
        train_seconds=float(run["train_seconds"]),
        total_seconds=float(run["total_seconds"]),
        samples=run["samples"],
    )
    return result, Path(run["run_dir"])


class ReportCheckpoints(TrainerCallback):
    """Every checkpoint the Trainer saves is reported to Ray Train.

    Written here rather than Ray's `RayTrainReportCallback`, which has every worker copy the newest
    checkpoint folder it finds: on one node that races rank 0 still writing it (or rotating old ones
    away). Here every rank first waits for the others at a barrier, then one worker per node uploads
    that node's folder (rank 0's holds the model and optimizer, every rank's its RNG state).
    """

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        report_checkpoint(Path(args.output_dir) / f"checkpoint-{state.global_step}", state)


def report_checkpoint(folder: Path, state: Any) -> None:
    """Report the checkpoint `folder` (the same name in storage) with the step and the latest loss."""
    import torch.distributed as td

    if td.is_available() and td.is_initialized():
        td.barrier()  # every rank has written its part of the checkpoint
    metrics = {"step": state.global_step}
    for record in reversed(state.log_history):
        if "loss" in record:
            metrics["loss"] = float(record["loss"])
            break
    uploads = ray.train.get_context().get_local_rank() == 0 and folder.is_dir()
    checkpoint = ray.train.Checkpoint.from_directory(str(folder)) if uploads else None
    ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=folder.name)


class CommittedCheckpoints(ray.train.UserCallback):
    """In the Ray Train controller: one line per checkpoint every worker has reported (the one a
    restart resumes from), forwarded to the `platform train` console by Ray."""

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        if checkpoint is not None and not is_final(checkpoint):
            shown = ", ".join(f"{k} {v:g}" for k, v in metrics[0].items() if isinstance(v, int | float))
            print(f"checkpoint committed: {checkpoint.path.rstrip('/').rsplit('/', 1)[-1]} ({shown})")
