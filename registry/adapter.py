"""Adapter folder validation: safetensors weights plus a LoRA `adapter_config.json`, nothing pickled."""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from registry.adapter_kinds import check_adapter_kind
from registry.errors import InvalidAdapterError

WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"
PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"}
LORA_MARKERS = (".lora_A", ".lora_B", ".lora_embedding_A", ".lora_embedding_B", ".lora_magnitude_vector")


@dataclass(frozen=True)
class AdapterInfo:
    """What serving needs to know before loading an adapter."""

    rank: int
    alpha: float
    target_modules: tuple[str, ...]
    tensor_names: tuple[str, ...]


def read_safetensors_header(path: Path) -> dict[str, Any]:
    """Parse the JSON header of a safetensors file without loading tensors."""
    with path.open("rb") as fh:
        return parse_safetensors_header(fh.read, path.stat().st_size, path.name)[0]


def parse_safetensors_header(
    read: Callable[[int], bytes], size: int, name: str
) -> tuple[dict[str, Any], int]:
    """The JSON header of a safetensors file of `size` bytes, read from its start with `read(n)`,
    and where its data starts; InvalidAdapterError (naming `name`) unless every tensor lies inside."""
    raw_len = read(8)
    if len(raw_len) != 8:
        raise InvalidAdapterError(f"{name}: not a safetensors file (too short)")
    (length,) = struct.unpack("<Q", raw_len)
    if length > min(size - 8, 100_000_000):
        raise InvalidAdapterError(f"{name}: not a safetensors file (bad header length)")
    try:
        header = json.loads(read(length))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidAdapterError(f"{name}: corrupt safetensors header ({exc})") from exc
    if not isinstance(header, dict):
        raise InvalidAdapterError(f"{name}: corrupt safetensors header")
    end = 8 + length
    for tensor, meta in header.items():
        if tensor == "__metadata__":
            continue
        offsets = meta.get("data_offsets") if isinstance(meta, dict) else None
        if not offsets or len(offsets) != 2 or end + offsets[1] > size:
            raise InvalidAdapterError(f"{name}: tensor {tensor!r} lies outside the file (truncated?)")
    return header, end


def validate_adapter(folder: Path) -> AdapterInfo:
    """Check a folder holds a loadable LoRA adapter; raise InvalidAdapterError naming the problem."""
    if not folder.is_dir():
        raise InvalidAdapterError(f"{folder}: not a folder")
    pickled = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickled:
        raise InvalidAdapterError(
            f"{folder}: pickle weights {pickled} are refused; save adapters as safetensors "
            "(peft: save_pretrained(..., safe_serialization=True))"
        )
    cfg_path, weights = folder / CONFIG, folder / WEIGHTS
    if not cfg_path.is_file():
        raise InvalidAdapterError(f"{folder}: missing {CONFIG}")
    if not weights.is_file():
        raise InvalidAdapterError(f"{folder}: missing {WEIGHTS}")
    try:
        cfg = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidAdapterError(f"{folder}: {CONFIG} is not valid JSON ({exc})") from exc
    if not isinstance(cfg, dict) or cfg.get("peft_type", "LORA") != "LORA":
        raise InvalidAdapterError(
            f"{folder}: {CONFIG} is not a LoRA config (peft_type {cfg.get('peft_type')!r})"
        )
    rank = cfg.get("r")
    if not isinstance(rank, int) or rank < 1:
        raise InvalidAdapterError(f"{folder}: {CONFIG} field 'r' must be a positive integer, got {rank!r}")
    targets = cfg.get("target_modules") or []
    if isinstance(targets, str):
        targets = [targets]
    header = read_safetensors_header(weights)
    names = tuple(sorted(k for k in header if k != "__metadata__"))
    if not names:
        raise InvalidAdapterError(f"{folder}: {WEIGHTS} holds no tensors")
    check_adapter_kind(folder, cfg, names)  # DoRA, modules_to_save, added tokens: refused (adapter_kinds.py)
    return AdapterInfo(rank, float(cfg.get("lora_alpha", rank)), tuple(sorted(targets)), names)


def lora_modules(tensor_names: tuple[str, ...]) -> set[str]:
    """`base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight` -> `model.layers.0.self_attn.q_proj`."""
    out = set()
    for name in tensor_names:
        stem = name.removeprefix("base_model.model.")
        for marker in LORA_MARKERS:
            if marker in stem:
                stem = stem.split(marker)[0]
                break
        out.add(stem)
    return out


def weight_shapes(folder: Path) -> dict[str, list[int]]:
    """Every tensor's shape in the `*.safetensors` files of a model folder, from the headers only."""
    shapes: dict[str, list[int]] = {}
    for f in sorted(folder.glob("*.safetensors")):
        header = read_safetensors_header(f)
        shapes.update({k: list(v.get("shape", [])) for k, v in header.items() if k != "__metadata__"})
    return shapes


def check_against_base(folder: Path, info: AdapterInfo, base_shapes: dict[str, list[int]]) -> None:
    """Every adapted module exists in the base model, and each LoRA pair fits its layer at the rank."""
    weights = folder / WEIGHTS
    missing = sorted(m for m in lora_modules(info.tensor_names) if f"{m}.weight" not in base_shapes)
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise InvalidAdapterError(
            f"{weights}: target modules not in the base model: {', '.join(missing[:5])}{more} "
            "(was it trained on another base model?)"
        )
    header = read_safetensors_header(weights)
    for name in info.tensor_names:
        module = lora_modules((name,)).pop()
        out_features, in_features = (base_shapes[f"{module}.weight"] + [0, 0])[:2]
        shape = list(header[name].get("shape", []))
        expected = None
        if ".lora_A." in name:
            expected = [info.rank, in_features]
        elif ".lora_B." in name:
            expected = [out_features, info.rank]
        if expected is not None and shape != expected:
            raise InvalidAdapterError(
                f"{weights}: {name} has shape {shape}, expected {expected} "
                f"(rank r={info.rank} from {CONFIG} and the base model's layer)"
            )
