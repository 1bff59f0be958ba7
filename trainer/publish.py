"""Push a finished run into the registry with its lineage."""

from __future__ import annotations

from registry.store import KEEP_FILES, Registry
from trainer.recipe import RunResult


def publish(result: RunResult, registry_root: str | None = None) -> str:
    """Push the run's adapter and its records; returns the new reference `name@N`."""
    registry = Registry(registry_root)
    extra = {
        f: result.run_dir / f for f in KEEP_FILES if f != "lineage.json" and (result.run_dir / f).is_file()
    }
    name = result.lineage["config"]["name"]
    version = registry.push(name, result.adapter_dir, result.lineage, extra_files=extra)
    return version.ref
