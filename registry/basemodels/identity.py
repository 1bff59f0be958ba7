"""What identifies a base model: its id and the sha256 of its safetensors weights."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from registry.errors import BaseModelError

EMBEDDED_SMOLLM2 = "embedded/smollm2-135m-instruct-q4_1"
EMBEDDED_TINY = "embedded/tiny-llama"
DEFAULT_BASE_MODEL = EMBEDDED_SMOLLM2
SHORT_NAMES = {"smollm2": EMBEDDED_SMOLLM2, "tiny": EMBEDDED_TINY}
IDENTITY_FILE = "lora_platform_model.json"


@dataclass(frozen=True)
class BaseModel:
    """A base model resolved to a local folder of safetensors weights."""

    id: str
    """The name adapters record and requests use (`embedded/...`, a Hub id, or a folder path)."""
    path: Path
    """Local folder with config, tokenizer and safetensors weights."""
    weights_sha256: str
    """sha256 over the safetensors files of the folder (sorted by name)."""

    @property
    def short_sha(self) -> str:
        return self.weights_sha256[:12]


def weights_sha256(folder: Path) -> str:
    """sha256 over every `*.safetensors` file of `folder`, names and bytes, sorted by name."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise BaseModelError(
            f"{folder}: no *.safetensors weights found (only safetensors models are supported)"
        )
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def read_identity(path: Path) -> dict[str, str] | None:
    """The identity file a built model folder carries (id and weights sha256), if any."""
    f = path / IDENTITY_FILE
    if not f.is_file():
        return None
    data: dict[str, str] = json.loads(f.read_text())
    return data
