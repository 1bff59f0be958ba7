"""Experiment tracking and lineage, against a real MLflow server (tests/trainer/mlflow_server.py)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import cli
from registry.store import Registry
from tests.trainer.mlflow_server import MlflowServer
from trainer.errors import ConfigError

TINY = [
    "--base-model",
    "embedded/tiny-llama",
    "--name",
    "tiny",
    "--max-steps",
    "3",
    "training.batch_size=8",
    "training.lr=0.01",
    "eval.max_examples=4",
    "eval.max_new_tokens=6",
    "eval.general_max_examples=0",  # the general set is tested in test_general.py
    "data.max_seq_len=96",
]


def _artifacts(client, run_id: str, path: str | None = None) -> set[str]:  # type: ignore[no-untyped-def]
    out: set[str] = set()
    for a in client.list_artifacts(run_id, path):
        out |= _artifacts(client, run_id, a.path) if a.is_dir else {a.path}
    return out


def test_mlflow_run_and_registry_version_point_at_each_other(
    mlflow_server: MlflowServer, tmp_path: Path
) -> None:
    from mlflow import MlflowClient

    registry = tmp_path / "registry"
    args = ["train", *TINY, "--output-dir", str(tmp_path / "runs"), "--registry", str(registry)]
    result = CliRunner().invoke(cli, [*args, "--tracking-uri", mlflow_server.uri])
    assert result.exit_code == 0, result.output

    version = Registry(registry).get("tiny@1")
    record = version.lineage["tracking"]["mlflow"]
    assert record["tracking_uri"] == mlflow_server.uri
    client = MlflowClient(mlflow_server.uri)
    run = client.get_run(record["run_id"])
    # each points at the other: the run is named and tagged after the version
    assert run.info.run_name == "tiny@1" and run.data.tags["lora_platform.registry_ref"] == "tiny@1"
    assert run.info.status == "FINISHED"
    assert run.info.experiment_id == record["experiment_id"]
    # the resolved config and the Trainer's arguments as params
    params = run.data.params
    assert params["config.training.lr"] == "0.01" and params["config.base_model"] == "embedded/tiny-llama"
    assert params["learning_rate"] == "0.01" and "lr_scheduler_type" in params
    # per-step metrics
    for key in ("loss", "learning_rate", "grad_norm", "train_tokens_per_second"):
        history = client.get_metric_history(run.info.run_id, key)
        assert [m.step for m in history] == [1, 2, 3], key
    assert client.get_metric_history(run.info.run_id, "final_loss")  # validation loss of the kept model
    assert run.data.metrics["num_input_tokens_seen"] > 0
    assert "heldout.adapter.loss" in run.data.metrics and "heldout.base.loss" in run.data.metrics
    # the evaluation table, the loss curve and the model card as artifacts
    files = _artifacts(client, run.info.run_id)
    assert {"loss.png", "README.md", "evaluation/predictions.json", "lineage.json", "config.yaml"} <= files
    table = json.loads(
        Path(client.download_artifacts(run.info.run_id, "evaluation/predictions.json")).read_text()
    )
    assert len(table["data"]) == 4 and "adapter_prediction" in table["columns"]
    card = Path(client.download_artifacts(run.info.run_id, "README.md")).read_text()
    assert "# tiny@1" in card

    shown = CliRunner().invoke(cli, ["registry", "show", "tiny@1", "--registry", str(registry)])
    assert shown.exit_code == 0 and record["run_id"] in shown.output and mlflow_server.uri in shown.output


def test_tensorboard_and_wandb_offline_and_the_lineage(tmp_path: Path) -> None:
    """Both trackers through the same path, and the lineage of a one-batch run: every Trainer
    argument, the hardware, the code revision, and real (non-padding) training tokens."""
    from rich.console import Console

    from trainer.config import load_config
    from trainer.recipe import LoRARecipe

    config = load_config(
        None,
        [
            "base_model=embedded/tiny-llama",
            "name=tiny",
            f"output_dir={tmp_path / 'runs'}",
            "training.max_steps=1",
            "training.batch_size=1024",  # one batch holds every training row
            "training.tracking=tensorboard,wandb",
            "eval.max_examples=3",
            "eval.max_new_tokens=4",
            "eval.general_max_examples=0",
            "data.max_seq_len=96",
        ],
    )
    recipe = LoRARecipe(config, Console(quiet=True))
    recipe.setup()
    recipe.train()
    recipe.evaluate()
    result = recipe.save()

    lineage = json.loads((result.run_dir / "lineage.json").read_text())
    real = sum(len(r.input_ids) for r in recipe.train_rows)
    padded = len(recipe.train_rows) * max(len(r.input_ids) for r in recipe.train_rows)
    assert lineage["training"]["tokens"] == real < padded
    assert lineage["training"]["tokens_per_second"] == pytest.approx(
        real / lineage["training"]["wall_seconds"], rel=0.01
    )
    args = lineage["trainer_arguments"]
    assert args["per_device_train_batch_size"] == 1024 and args["max_steps"] == 1
    assert {"lr_scheduler_type", "optim", "max_grad_norm", "weight_decay", "seed"} <= set(args)
    hw = lineage["hardware"]
    assert hw["device"] == "cpu" and hw["device_count"] == 1 and hw["world_size"] == 1
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout
    assert lineage["code_revision"]["git_sha"] == head.strip()
    assert {"torch", "transformers", "peft", "python"} <= set(lineage["libraries"])

    tracking = lineage["tracking"]
    events = list(Path(tracking["tensorboard"]["log_dir"]).glob("events.out.tfevents.*"))
    assert events, "no TensorBoard event files"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars: set[str] = set()
    texts: set[str] = set()
    for event_file in events:
        acc = EventAccumulator(str(event_file))
        acc.Reload()
        scalars |= set(acc.Tags()["scalars"])
        texts |= set(acc.Tags()["tensors"])
    assert {"train/loss", "train/train_tokens_per_second", "heldout.adapter.loss"} <= scalars
    assert any("evaluation" in t for t in texts)
    wandb = tracking["wandb"]
    assert wandb["mode"] == "offline"
    offline = Path(wandb["dir"])  # wandb/offline-run-<time>-<id> under the run folder
    assert offline.name.endswith(wandb["run_id"]) and offline.parent.parent == result.run_dir
    assert list(offline.glob("*.wandb"))


def test_unknown_tracker_is_a_config_error() -> None:
    from trainer.config import load_config

    with pytest.raises(ConfigError, match=r"training.tracking: unknown tracker\(s\) \['neptune'\]"):
        load_config(None, ["training.tracking=neptune"])
