"""Training under torchrun (2 CPU processes, gloo, the tiny model): one run folder, one version,
the same training as one process with the same global batch, every held-out row evaluated once,
and a rank that fails publishes nothing. The strategy checks go through the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from cli.main import cli

ROOT = Path(__file__).resolve().parents[2]
HELD_OUT = 7
"""Held-out rows evaluated: odd, so the two ranks' shares differ in size."""
GENERAL = 5
"""General-set items scored, odd too."""
TRAIN = [
    "train",
    "--base-model",
    "tiny",
    "--name",
    "ddp",
    "training.max_steps=3",
    "training.lr=0.01",
    "training.eval_every=0",
    f"eval.max_examples={HELD_OUT}",
    "eval.max_new_tokens=4",
    "data.max_seq_len=96",
    "data.overlong=truncate",
    "eval.baseline=few_shot:1",
    f"eval.general_max_examples={GENERAL}",
]
LOSS_TOLERANCE = 1e-3
"""Relative: bf16 autocast on batches padded to different widths (2 rows vs 4) moves the 4th digit."""


def torchrun(
    cwd: Path, *args: str, script: str | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    entry = [str(Path(__file__).parent / script)] if script else ["-m", "cli.main"]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    environment = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", **env}
    return subprocess.run(
        [*command, *entry, *args], cwd=cwd, env=environment, capture_output=True, text=True, timeout=900
    )


def torchrun_train(
    tmp_path: Path, *overrides: str, script: str | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    """`platform train` of TRAIN (batch 2 per rank) under torchrun, runs in tmp_path/runs, registry tmp_path/registry."""
    runs, registry = str(tmp_path / "runs"), str(tmp_path / "registry")
    args = [*TRAIN, "--output-dir", runs, "--registry", registry, "training.batch_size=2", *overrides]
    return torchrun(tmp_path, *args, script=script, **env)


def versions(registry: Path) -> list[str]:
    out = CliRunner().invoke(cli, ["registry", "list", "--json", "--registry", str(registry)])
    assert out.exit_code == 0, out.output
    return [v["ref"] for v in json.loads(out.output)]


def run_folder(runs: Path) -> Path:
    (folder,) = runs.iterdir()  # one run folder for all ranks
    return folder


def losses(folder: Path) -> list[float]:
    records = [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if "loss" in r]


def test_two_processes_publish_one_version_trained_like_one_process(tmp_path: Path) -> None:
    """With gradient checkpointing on (non-reentrant, DDP without unused-parameter search)."""
    registry = tmp_path / "registry"
    out = torchrun_train(tmp_path, "training.gradient_checkpointing=true")
    assert out.returncode == 0, out.stdout + out.stderr
    assert versions(registry) == ["ddp@1"]
    folder = run_folder(tmp_path / "runs")
    lineage = json.loads((folder / "lineage.json").read_text())
    assert lineage["distributed"]["world_size"] == 2 and lineage["distributed"]["strategy"] == "ddp"
    predictions = [json.loads(x) for x in (folder / "predictions.jsonl").read_text().splitlines()]

    single = CliRunner().invoke(
        cli, [*TRAIN, "--output-dir", str(tmp_path / "one"), "--no-push", "training.batch_size=4"]
    )
    assert single.exit_code == 0, single.output
    alone = run_folder(tmp_path / "one")
    assert len(losses(folder)) == len(losses(alone)) == 3
    assert abs(losses(folder)[-1] - losses(alone)[-1]) <= LOSS_TOLERANCE * losses(alone)[-1]
    # every held-out row evaluated once, in order, by one rank or the other
    expected = [json.loads(x) for x in (alone / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == HELD_OUT
    assert [p["prompt"] for p in predictions] == [p["prompt"] for p in expected]
    # and so was the prompted base (eval.baseline) and every general-set item, base and adapter
    assert all(p["prompted_prediction"] is not None for p in predictions)
    assert lineage["general"]["items"] == GENERAL and set(lineage["general"]) >= {"base", "adapter"}
    base = json.loads((folder / "metrics.json").read_text())["base"]["loss"]
    assert abs(base - json.loads((alone / "metrics.json").read_text())["base"]["loss"]) < 1e-3 * base


def test_a_rank_that_fails_fails_the_run_and_publishes_nothing(tmp_path: Path) -> None:
    registry = tmp_path / "registry"
    out = torchrun_train(tmp_path, script="failing_rank.py", FAILING_RANK_REGISTRY=str(registry))
    assert out.returncode != 0
    assert "rank 1 failed after its evaluation" in out.stderr
    assert versions(registry) == []
    assert len(list((tmp_path / "runs").iterdir())) == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusals of a CPU-only machine")
def test_a_strategy_this_machine_cannot_run_is_a_bad_argument(tmp_path: Path) -> None:
    for override, message in (
        ("training.strategy=deepspeed", "training.strategy=deepspeed needs"),
        ("training.strategy=zero9", "training.strategy must be one of auto, ddp, fsdp, deepspeed"),
        ("training.strategy_config=zero3", "training.strategy_config is for strategy fsdp or deepspeed"),
    ):
        out = CliRunner().invoke(
            cli, ["train", "--base-model", "tiny", "--output-dir", str(tmp_path), override]
        )
        assert out.exit_code == 2, out.output
        assert message in out.output and "Traceback" not in out.output
    qlora = ["training.strategy=fsdp", "lora.quantize=nf4"]
    out = CliRunner().invoke(cli, ["train", "--base-model", "tiny", "--output-dir", str(tmp_path), *qlora])
    assert (
        out.exit_code == 2
        and "training.strategy=fsdp with lora.quantize=nf4 (FSDP + QLoRA) needs" in out.output
    )
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_every_shipped_strategy_preset_becomes_trainer_arguments() -> None:
    from trainer import strategy
    from trainer.config import TrainConfig

    presets = sorted(strategy.PRESETS_DIR.glob("*.json"))
    assert [p.stem for p in presets] == ["fsdp-lora", "fsdp-qlora", "zero2", "zero3"]
    for preset in presets:
        config = TrainConfig()
        config.training.strategy = "fsdp" if preset.stem.startswith("fsdp") else "deepspeed"
        config.training.strategy_config = preset.stem
        args = strategy.trainer_arguments(config)
        if config.training.strategy == "fsdp":
            assert args["fsdp"] == "full_shard auto_wrap"
            assert args["fsdp_config"]["state_dict_type"] == "FULL_STATE_DICT"
        else:
            stage = json.loads(Path(args["deepspeed"]).read_text())["zero_optimization"]["stage"]
            assert stage == int(preset.stem[-1])
        assert strategy.lineage(config, 8)["preset"] == preset.stem
    qlora = TrainConfig()
    qlora.training.strategy, qlora.lora.quantize = "fsdp", "nf4"
    assert strategy.lineage(qlora, 8)["preset"] == "fsdp-qlora"  # the default preset with lora.quantize
