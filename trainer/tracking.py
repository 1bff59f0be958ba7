"""Experiment tracking: MLflow (first class), TensorBoard and Weights & Biases through one path.

`Tracking` opens one run per training run before the Trainer starts, hands transformers' own
integration callbacks to the Trainer (per-step loss, validation loss, learning rate, grad norm,
tokens/s), and at the end logs the held-out evaluation table, `loss.png`, the resolved config
and the lineage. Its `record` goes into the version's lineage; after the push `link()` names the
MLflow run after the registry reference and tags it, so each points at the other.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from trainer.config import TrainConfig
from trainer.errors import TrainerError

log = logging.getLogger("lora_platform.tracking")
TRACKERS = ("mlflow", "tensorboard", "wandb")
REF_TAG = "lora_platform.registry_ref"
"""MLflow run tag holding the registry reference (name@N) of the version the run produced."""
REGISTRY_TAG = "lora_platform.registry"
ARTIFACTS = ("loss.png", "config.yaml", "metrics.json", "train_log.jsonl", "lineage.json")
MAX_PARAM_CHARS = 500


def selected(config: TrainConfig) -> list[str]:
    """The trackers a config asks for: `training.tracking`, the older `report_to`, and mlflow
    whenever a tracking URI is given."""
    t = config.training
    names = [*t.tracking, *t.report_to, *(["mlflow"] if t.tracking_uri else [])]
    return [n for n in TRACKERS if n in names]


def flat_params(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """`{"training": {"lr": 1e-4}}` -> `{"training.lr": "0.0001"}` (long values cut for MLflow)."""
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_params(value, f"{name}."))
        else:
            text = value if isinstance(value, str) else json.dumps(value, default=str)
            out[name] = text[:MAX_PARAM_CHARS]
    return out


def public_uri(uri: str) -> str:
    """The URI without user:password, for the lineage and messages."""
    parts = urlsplit(uri)
    if parts.password is None and parts.username is None:
        return uri
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=netloc))


class Tracking:
    """The tracking runs of one training run. Whoever calls `start()` calls `finish()` or `fail()`."""

    def __init__(self, config: TrainConfig, run_dir: Path) -> None:
        self.config = config
        self.run_dir = run_dir
        self.names = selected(config)
        self.experiment = config.training.tracking_experiment or config.name
        self.record: dict[str, Any] = {}
        """Per tracker, what identifies its run: goes into the lineage as `tracking`."""
        self._wandb: Any = None

    # -- start ---------------------------------------------------------------------------
    def start(self) -> None:
        try:
            if "mlflow" in self.names:
                self._start_mlflow()
            if "wandb" in self.names:
                self._start_wandb()
            if "tensorboard" in self.names:
                self.record["tensorboard"] = {"log_dir": str(self.run_dir / "tensorboard")}
        except ImportError as exc:
            self.fail()
            raise TrainerError(f"training.tracking: {exc.name} is not installed ({exc})") from exc

    def _start_mlflow(self) -> None:
        import mlflow

        uri = self.config.training.tracking_uri
        if uri:
            mlflow.set_tracking_uri(uri)
        try:
            experiment = mlflow.set_experiment(self.experiment)
            run = mlflow.start_run(
                experiment_id=experiment.experiment_id,
                run_name=self.run_dir.name,
                tags={"lora_platform.run_dir": str(self.run_dir), "lora_platform.adapter": self.config.name},
            )
            items = list(flat_params(self.config.to_dict(), "config.").items())
            for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
                mlflow.log_params(dict(items[i : i + 100]))
        except mlflow.exceptions.MlflowException as exc:
            raise TrainerError(f"MLflow at {public_uri(mlflow.get_tracking_uri())}: {exc.message}") from exc
        tracking_uri = public_uri(mlflow.get_tracking_uri())
        self.record["mlflow"] = {
            "tracking_uri": tracking_uri,
            "experiment_id": run.info.experiment_id,
            "run_id": run.info.run_id,
        }
        if tracking_uri.startswith(("http://", "https://")):
            self.record["mlflow"]["run_url"] = (
                f"{tracking_uri.rstrip('/')}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
            )

    def _start_wandb(self) -> None:
        import wandb

        mode = os.environ.get("WANDB_MODE", "offline")  # nothing leaves the machine unless asked
        self._wandb = wandb.init(
            project=self.experiment,
            name=self.run_dir.name,
            dir=str(self.run_dir),
            mode=mode,  # type: ignore[arg-type]
            config=self.config.to_dict(),
        )
        self.record["wandb"] = {"run_id": self._wandb.id, "project": self.experiment, "mode": mode}
        self.record["wandb"]["dir"] = str(Path(self._wandb.dir).parent)

    # -- train ---------------------------------------------------------------------------
    def callbacks(self) -> list[Any]:
        """transformers' integration callbacks, attached to the runs opened by `start()`."""
        from transformers.integrations.integration_utils import (
            MLflowCallback,
            TensorBoardCallback,
            WandbCallback,
        )

        out: list[Any] = []
        if "mlflow" in self.names:
            out.append(MLflowCallback())  # type: ignore[no-untyped-call]  # finds the active run and logs into it
        if "wandb" in self.names:
            out.append(WandbCallback())  # type: ignore[no-untyped-call]  # likewise wandb.run
        if "tensorboard" in self.names:
            from torch.utils.tensorboard import SummaryWriter

            out.append(
                TensorBoardCallback(
                    SummaryWriter(  # type: ignore[no-untyped-call]
                        self.record["tensorboard"]["log_dir"]
                    )
                )
            )
        return out

    # -- finish --------------------------------------------------------------------------
    def finish(self, metrics: dict[str, dict[str, float]], predictions: list[dict[str, str]]) -> None:
        """Log the held-out metrics, the evaluation table and the run files; close the runs."""
        flat = {f"heldout.{side}.{k}": v for side, values in metrics.items() for k, v in values.items()}
        files = [self.run_dir / f for f in ARTIFACTS if (self.run_dir / f).is_file()]
        if "mlflow" in self.record:
            import mlflow

            mlflow.log_metrics(flat)
            if predictions:
                mlflow.log_table(_columns(predictions), artifact_file="evaluation/predictions.json")
            for path in files:
                mlflow.log_artifact(str(path))
            mlflow.flush_async_logging()
            mlflow.end_run("FINISHED")
        if self._wandb is not None:
            import wandb

            self._wandb.summary.update(flat)
            if predictions:
                columns = _columns(predictions)
                table = wandb.Table(columns=list(columns), data=[list(r.values()) for r in predictions])
                self._wandb.log({"evaluation": table})
            if (self.run_dir / "loss.png").is_file():
                self._wandb.log({"loss_curve": wandb.Image(str(self.run_dir / "loss.png"))})
            self._wandb.finish()
            self._wandb = None
        if "tensorboard" in self.record:
            _tensorboard_summary(Path(self.record["tensorboard"]["log_dir"]), flat, predictions)

    def fail(self) -> None:
        """Close the runs as failed (training raised or was interrupted)."""
        if "mlflow" in self.record:
            import mlflow

            if mlflow.active_run() is not None:
                mlflow.end_run("FAILED")
        if self._wandb is not None:
            self._wandb.finish(exit_code=1)
            self._wandb = None


def _columns(rows: list[dict[str, str]]) -> dict[str, list[str]]:
    keys = list(rows[0])
    return {k: [str(r.get(k, "")) for r in rows] for k in keys}


def _tensorboard_summary(log_dir: Path, flat: dict[str, float], predictions: list[dict[str, str]]) -> None:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(log_dir))
    try:
        for key, value in flat.items():
            writer.add_scalar(key, value)
        if predictions:
            head = list(predictions[0])
            lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            lines += [
                "| " + " | ".join(str(r.get(k, "")).replace("|", "/") for k in head) + " |"
                for r in predictions
            ]
            writer.add_text("evaluation", "\n".join(lines))
    finally:
        writer.close()


def link(record: dict[str, Any], ref: str, registry_location: str, card: Path | None) -> bool:
    """After the push: the MLflow run is named after `ref`, tagged with it, and gets the model card.

    The version is already stored: a tracking server that fails now costs the link, not the
    push, so the failure is logged and False returned."""
    info = record.get("mlflow")
    if not info:
        return False
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=info["tracking_uri"])
    run_id = info["run_id"]
    try:
        client.update_run(run_id, name=ref)
        client.set_tag(run_id, REF_TAG, ref)
        client.set_tag(run_id, REGISTRY_TAG, registry_location)
        if card is not None and card.is_file():
            client.log_artifact(run_id, str(card))
    except Exception as exc:  # MlflowException, connection errors: the push stands
        log.warning("MLflow run %s at %s not linked to %s: %s", run_id, info["tracking_uri"], ref, exc)
        return False
    return True
