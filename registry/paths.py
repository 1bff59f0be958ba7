"""Where the platform keeps its local state."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """Root of the project's local state (`LORA_PLATFORM_HOME`, default ~/.cache/lora-platform)."""
    return Path(os.environ.get("LORA_PLATFORM_HOME", Path.home() / ".cache" / "lora-platform"))
