"""A base model name (embedded, local folder or Hub id) resolved to a local folder with its identity."""

from __future__ import annotations

from pathlib import Path

from registry.basemodels.embedded import build_smollm2, embedded
from registry.basemodels.identity import (
    DEFAULT_BASE_MODEL,
    EMBEDDED_SMOLLM2,
    EMBEDDED_TINY,
    SHORT_NAMES,
    BaseModel,
    read_identity,
    weights_sha256,
)
from registry.errors import BaseModelError


def resolve_base_model(name: str | None = None) -> BaseModel:
    """Resolve a base model name to a local folder, building the embedded ones on first use."""
    name = SHORT_NAMES.get(name or DEFAULT_BASE_MODEL, name or DEFAULT_BASE_MODEL)
    if name == EMBEDDED_SMOLLM2:
        return embedded(name, build_smollm2)
    if name == EMBEDDED_TINY:
        from registry.basemodels.tiny import build_tiny_llama

        return embedded(name, build_tiny_llama)
    path = Path(name).expanduser()
    if path.is_dir():
        identity = read_identity(path)
        if identity is not None:
            return BaseModel(identity["id"], path.resolve(), identity["weights_sha256"])
        return BaseModel(str(path.resolve()), path.resolve(), weights_sha256(path))
    if name.startswith("embedded/"):
        known = ", ".join(sorted([EMBEDDED_SMOLLM2, EMBEDDED_TINY]))
        raise BaseModelError(f"unknown embedded base model {name!r}; known: {known}")
    return _from_hub(name)


def _from_hub(repo_id: str) -> BaseModel:
    try:
        from huggingface_hub import snapshot_download

        folder = snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt"])
    except Exception as exc:  # the Hub client raises many types; all mean "not available"
        raise BaseModelError(
            f"base model {repo_id!r} is neither a local folder nor reachable on the Hugging Face Hub "
            f"({type(exc).__name__}: {exc}). Use a local folder, or one of: {', '.join(SHORT_NAMES)}"
        ) from exc
    return BaseModel(repo_id, Path(folder), weights_sha256(Path(folder)))
