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
    parent = result.lineage.get("init_adapter") or {}
    version = registry.push(
        name,
        result.adapter_dir,
        result.lineage,
        extra_files=extra,
        parent=parent.get("version") if parent.get("name") == name else None,
    )
    return version.ref
