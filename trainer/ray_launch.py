"""`platform train --workers N`: the same recipe in every worker of a Ray Train `TorchTrainer`
(what runs in the workers: trainer/ray_worker.py).

The driver (the `platform train` process) connects to Ray (a local instance, or the cluster at
`--ray-address`), starts N workers and waits. Ray Train sets up the process group (gloo on CPU,
NCCL on GPUs) and RANK/WORLD_SIZE/LOCAL_RANK in each worker, so the recipe runs rank-aware as it does
under torchrun (trainer/distributed.py). What Ray adds:

- Checkpoints go to shared storage: `train-checkpoints/<run>/checkpoint-<step>/` beside the
  registry's version files (the registry folder, or its artifact store: a shared folder or an fsspec
  URL), or `--checkpoint-storage`. Every Hugging Face checkpoint is reported to Ray Train; on each
  node the first worker uploads that node's checkpoint folder (rank 0's holds the model and
  optimizer, every rank's its RNG state), after a barrier so every file is complete.
- A worker that dies (SIGKILL, OOM, a lost node) fails the attempt; Ray Train starts the workers
  again (up to `max_failures` times) and each resumes from the latest checkpoint through the
  Trainer's `resume_from_checkpoint`.
- A mistake of the user's (bad data, a config the device cannot run) is not retried: the workers
  return it and the driver raises it.
- At the end rank 0 reports the run's publishable files (adapter, lineage, metrics, ...) as the
  last checkpoint; the driver reads it and publishes one version, as a single-process run does.
"""

from __future__ import annotations

import tempfile
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console

from registry.store import Registry
from trainer.config import TrainConfig
from trainer.errors import TrainerError
from trainer.recipe import RunResult

CHECKPOINTS_FOLDER = "train-checkpoints"
"""Under the registry's artifact location: one folder per Ray Train run."""


@dataclass(frozen=True)
class RayLaunch:
    """How `platform train --workers N` runs on Ray."""

    workers: int
    """Training processes (Ray Train workers), one per GPU when `gpus_per_worker` is 1."""
    address: str | None = None
    """Ray cluster to join (`auto`, `ray://head:10001`, `host:6379`); None: start a local Ray."""
    gpus_per_worker: float = 0
    """GPUs each worker reserves (0: train on CPU)."""
    cpus_per_worker: float = 1
    """CPUs each worker reserves (its torch threads)."""
    max_failures: int = 3
    """Times Ray Train restarts the workers from the latest checkpoint after a worker dies."""
    checkpoint_storage: str | None = None
    """Folder or URL (s3://..., gs://...) reachable from every worker; None: beside the registry's files."""


def checkpoint_storage(launch: RayLaunch, registry: str | None) -> str:
    """Where the run's checkpoints go: `--checkpoint-storage`, else `train-checkpoints/` beside the
    registry's version files (every worker reaches those when the registry is shared)."""
    if launch.checkpoint_storage:
        return launch.checkpoint_storage
    reg = Registry(registry)
    try:
        base = reg.artifacts_location
    finally:
        reg.close()
    return f"{base.rstrip('/')}/{CHECKPOINTS_FOLDER}"


def storage_arguments(location: str) -> dict[str, Any]:
    """`RunConfig` storage arguments: a folder as an absolute path; a URL through fsspec (the
    filesystem the artifact store uses, so it takes the same URLs and credentials)."""
    if "://" not in location:
        return {"storage_path": str(Path(location).expanduser().resolve())}
    import fsspec
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    fs, path = fsspec.core.url_to_fs(location)
    return {"storage_path": path, "storage_filesystem": PyFileSystem(FSSpecHandler(fs))}


def train_on_ray(
    config: TrainConfig, launch: RayLaunch, registry: str | None, console: Console, push: bool = True
) -> RunResult:
    """Run the recipe on `launch.workers` Ray Train workers and publish one version (unless `push`
    is False); the finished run. After a publish the run's checkpoints are removed from storage."""
    try:
        import ray
        import ray.train
    except ImportError as exc:
        raise TrainerError(
            "--workers trains on Ray: install the `ray` extra (pip install -e '.[ray]')"
        ) from exc
    if not hasattr(ray.train, "UserCallback"):  # only the v2 API has it
        raise TrainerError("--workers needs Ray Train's v2 API: unset RAY_TRAIN_V2_ENABLED (or set it to 1)")
    from trainer.ray_worker import FINAL, read_final

    # workers run where Ray puts them: the run folder must not depend on their working directory
    config = replace(config, output_dir=str(Path(config.output_dir).expanduser().resolve()))
    storage = checkpoint_storage(launch, registry)
    name = f"{config.name}-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    started = not ray.is_initialized()
    if started:
        ray.init(address=launch.address, include_dashboard=False)
    try:
        console.print(f"[bold]Ray Train[/] run {name}: {launch.workers} workers, checkpoints in {storage}")
        result = _fit(config, launch, registry, storage, name)
        with tempfile.TemporaryDirectory(prefix=f"{name}-") as tmp:
            result.checkpoint.to_directory(tmp)
            run, worker_dir = read_final(Path(tmp))
            if push:
                from trainer.publish import publish

                run.registry_ref = publish(run, registry)
                result.filesystem.delete_dir(result.path)  # the version holds what they were for
            else:
                console.print(f"the run's files stay in {storage.rstrip('/')}/{name}/{FINAL}")
            return replace(run, run_dir=worker_dir, adapter_dir=worker_dir / "adapter")
    finally:
        if started:
            ray.shutdown()


def _fit(config: TrainConfig, launch: RayLaunch, registry: str | None, storage: str, name: str) -> Any:
    """The Ray Train result of a finished run (its last checkpoint is the final one)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig, TrainingFailedError
    from ray.train.torch import TorchTrainer

    from trainer.ray_worker import CommittedCheckpoints, is_final, train_worker

    resources = {"CPU": launch.cpus_per_worker}
    if launch.gpus_per_worker:
        resources["GPU"] = launch.gpus_per_worker
    # mypy reads Ray Train v1's signatures; ray.train picks the v2 API (return values, UserCallback)
    # at import time, which train_on_ray has checked
    trainer = TorchTrainer(
        train_worker,  # type: ignore[arg-type]
        train_loop_config={"config": config, "registry": registry},
        scaling_config=ScalingConfig(
            num_workers=launch.workers, use_gpu=launch.gpus_per_worker > 0, resources_per_worker=resources
        ),
        run_config=RunConfig(
            name=name,
            failure_config=FailureConfig(max_failures=launch.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            callbacks=[CommittedCheckpoints()],  # type: ignore[list-item]
            **storage_arguments(storage),
        ),
    )
    try:
        result: Any = trainer.fit()
    except TrainingFailedError as exc:
        raise TrainerError(
            f"Ray Train run {name} failed (after up to {launch.max_failures} restarts): {exc}"
        ) from exc
    if isinstance(result.return_value, str):  # a user error the workers returned (not retried)
        raise TrainerError(result.return_value)
    if not is_final(result.checkpoint):
        raise TrainerError(f"Ray Train run {name} ended without its final checkpoint")
    return result
