"""Load registry adapters onto their base model (transformers + peft), checking the base matches."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from registry.basemodels import BaseModel, resolve_base_model
from registry.errors import InvalidAdapterError
from registry.store import Registry, Version
from trainer.errors import TrainerError

BASE = "base"


def resolve_adapters(refs: list[str], registry_root: str | None) -> tuple[BaseModel, list[Version | None]]:
    """Resolve refs (registry references or `base`) to versions sharing one base model."""
    registry = Registry(registry_root)
    versions: list[Version | None] = [None if r == BASE else registry.get(r) for r in refs]
    bases = {(v.base_model, v.base_sha256) for v in versions if v is not None}
    if len(bases) > 1:
        raise TrainerError(f"these adapters were trained on different base models: {sorted(bases)}")
    base_id = next(iter(bases))[0] if bases else None
    base = resolve_base_model(base_id)
    for v in versions:
        if v is not None and v.base_sha256 != base.weights_sha256:
            raise InvalidAdapterError(
                f"{v.ref} was trained on {v.base_model} weights sha256 {v.base_sha256[:12]}..., but the local "
                f"{base.id} has sha256 {base.short_sha}...: adapter for another base model"
            )
    return base, versions


def attach(model: Any, versions: list[Version | None]) -> Any:
    """Wrap `model` in a PeftModel holding every version as a named adapter (name = ref)."""
    from peft import PeftModel

    adapters = [v for v in versions if v is not None]
    if not adapters:
        return model
    peft_model = PeftModel.from_pretrained(model, Path(adapters[0].path), adapter_name=adapters[0].ref)
    for v in adapters[1:]:
        peft_model.load_adapter(Path(v.path), adapter_name=v.ref)
    return peft_model
