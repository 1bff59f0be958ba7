"""Merge an adapter into its base model (`merge_and_unload`) and save a standalone model."""

from __future__ import annotations

import json
from pathlib import Path

from trainer.errors import TrainerError
from trainer.loading import attach, resolve_adapters
from trainer.model import load_base, load_tokenizer


def merge(ref: str, output: Path, registry_root: str | None = None, dtype: str = "fp32") -> Path:
    if output.exists() and any(output.iterdir()):
        raise TrainerError(f"{output}: output folder is not empty")
    base, versions = resolve_adapters([ref], registry_root)
    version = versions[0]
    assert version is not None
    model = attach(load_base(base, dtype), versions)
    merged = model.merge_and_unload()
    merged.save_pretrained(output, safe_serialization=True)
    load_tokenizer(base).save_pretrained(output)
    (output / "lora_platform_merge.json").write_text(
        json.dumps(
            {"merged_from": version.ref, "base_model": base.id, "base_model_sha256": base.weights_sha256},
            indent=2,
        )
        + "\n"
    )
    return output
