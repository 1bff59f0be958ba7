"""Register a local peft folder (trained with Axolotl, TRL, or downloaded) as a new version.

The folder passes the checks a push from the trainer passes, plus the ones serving would
otherwise make at load time: safetensors only, a LoRA config with a positive rank, every
adapted module present in the base model with matching shapes. The base model's id and
weights sha256 are recorded in the lineage, so serving refuses it on any other base.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from registry.adapter import CONFIG, check_adapter, validate_adapter, weight_shapes
from registry.basemodels import resolve_base_model
from registry.errors import InvalidAdapterError
from registry.refs import check_name
from registry.store import Registry, Version


def add_folder(registry: Registry, folder: Path, name: str, base_model: str | None = None) -> Version:
    """Validate `folder` against its base model and push it as the next version of `name`."""
    check_name(name)
    info = validate_adapter(folder)
    config = json.loads((folder / CONFIG).read_text())
    declared = config.get("base_model_name_or_path")
    if not (base_model or declared):
        raise InvalidAdapterError(
            f"{folder / CONFIG}: no base_model_name_or_path; name the base model (--base-model)"
        )
    base = resolve_base_model(base_model or declared)
    info = check_adapter(folder, weight_shapes(base.path))
    lineage: dict[str, Any] = {
        "base_model": base.id,
        "base_model_sha256": base.weights_sha256,
        "added_from": {
            "path": str(folder.resolve()),
            "base_model_name_or_path": declared,
            "rank": info.rank,
            "alpha": info.alpha,
            "target_modules": list(info.target_modules),
        },
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    return registry.push(name, folder, lineage)
