"""Push a finished run into the registry with its lineage, and link its tracking run to the version;
`train_and_publish`, what `platform train` runs on every process of a (distributed) run."""

from __future__ import annotations

from collections.abc import Callable

from rich.console import Console

from registry.response_format import RESPONSE_FORMAT
from registry.store import KEEP_FILES, Registry
from trainer.config import TrainConfig
from trainer.distributed import Dist
from trainer.errors import RankFailedError
from trainer.recipe import LoRARecipe, RunResult, new_recipe
from trainer.tracking import link


def train_and_publish(
    config: TrainConfig,
    console: Console | None = None,
    registry_root: str | None = None,
    push: bool = True,
    dist: Dist | None = None,
    prepare: Callable[[LoRARecipe], None] | None = None,
) -> RunResult | None:
    """Train, evaluate and save on this process's rank, then publish one version from rank 0.

    Every rank of a run launched by torchrun/accelerate/Ray Train calls this (`dist`: from the
    environment when not given); one process alone is a run of one. Rank 0 publishes only after
    every rank has come through (an all-reduce of a success flag): a rank that fails never joins it,
    and its exit ends the others (torchrun stops every process), so nothing is half-published.
    Returns the result on rank 0 and None on the other ranks. `prepare` is a launcher's change to
    the recipe before it sets up (Ray Train: checkpoint reports, the checkpoint to resume from).
    """
    with (dist or Dist.from_env()).joined() as dist:
        if not dist.is_main:
            console = Console(quiet=True)  # one plan, one progress bar: rank 0's
        recipe = new_recipe(config, console, registry_root, dist)
        if prepare is not None:
            prepare(recipe)
        result: RunResult | None = None
        with recipe.tracked():
            recipe.setup()
            recipe.train()
            recipe.evaluate()
            failure: BaseException | None = None
            if dist.is_main:
                try:
                    result = recipe.save()
                except BaseException as exc:  # told to every rank below, then raised as it was
                    failure = exc
            if not dist.all_ok(failure is None):
                if failure is not None:
                    raise failure
                raise RankFailedError(
                    "rank 0 could not save the run (its error is above); nothing was published"
                )
    if result is None:
        return None
    if push:
        result.registry_ref = publish(result, registry_root)
    return result


def publish(result: RunResult, registry_root: str | None = None) -> str:
    """Push the run's adapter and its records; returns the new reference `name@N`. A run whose
    config named a `response_format` publishes it as the version's default response format.

    The lineage already holds the tracking run's id and URI; once the number is issued the MLflow
    run is renamed to `name@N`, tagged with it and given the model card (each points at the other).
    """
    registry = Registry(registry_root)
    try:
        extra = {
            f: result.run_dir / f
            for f in (*KEEP_FILES, RESPONSE_FORMAT)
            if f != "lineage.json" and (result.run_dir / f).is_file()
        }
        name = result.lineage["config"]["name"]
        parent = result.lineage.get("init_adapter") or {}
        version = registry.push(
            name,
            result.adapter_dir,
            result.lineage,
            extra_files=extra,
            parent=parent.get("version") if parent.get("name") == name else None,
        )
        link(result.lineage.get("tracking") or {}, version.ref, registry.location, version.path / "README.md")
    finally:
        registry.close()
    return version.ref
