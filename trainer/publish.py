"""Push a finished run into the registry with its lineage, and link its tracking run to the version."""

from __future__ import annotations

from registry.store import KEEP_FILES, Registry
from trainer.recipe import RunResult
from trainer.tracking import link


def publish(result: RunResult, registry_root: str | None = None) -> str:
    """Push the run's adapter and its records; returns the new reference `name@N`.

    The lineage already holds the tracking run's id and URI; once the number is issued the MLflow
    run is renamed to `name@N`, tagged with it and given the model card (each points at the other).
    """
    registry = Registry(registry_root)
    try:
        extra = {
            f: result.run_dir / f
            for f in KEEP_FILES
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
