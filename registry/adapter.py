"""Adapter folder validation: safetensors weights plus a LoRA `adapter_config.json`, nothing pickled."""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
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
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict, compare=False)
    """Every tensor's shape, from the safetensors header."""
    module_ranks: dict[str, int] = field(default_factory=dict, compare=False)
    """Each adapted module's rank, read from its tensors (`model.layers.0.self_attn.q_proj` -> 8)."""


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
    """Check a folder holds a loadable LoRA adapter; raise InvalidAdapterError naming the problem.

    The rank is read from the tensors, not only from `adapter_config.json`: every `lora_A` is
    `[rank, in]`, its `lora_B` is `[out, rank]`, and that rank is the one the config declares for
    the module (`r`, or its `rank_pattern` entry). An engine that trusts a config whose tensors
    disagree reads past its buffers."""
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
        peft_type = cfg.get("peft_type") if isinstance(cfg, dict) else None
        raise InvalidAdapterError(f"{folder}: {CONFIG} is not a LoRA config (peft_type {peft_type!r})")
    rank = cfg.get("r")
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise InvalidAdapterError(f"{folder}: {CONFIG} field 'r' must be a positive integer, got {rank!r}")
    targets = cfg.get("target_modules") or []
    if isinstance(targets, str):
        targets = [targets]
    header = read_safetensors_header(weights)
    shapes = {k: tuple(v.get("shape", [])) for k, v in header.items() if k != "__metadata__"}
    if not shapes:
        raise InvalidAdapterError(f"{folder}: {WEIGHTS} holds no tensors")
    check_adapter_kind(
        folder, cfg, tuple(sorted(shapes))
    )  # DoRA, modules_to_save, added tokens: refused (adapter_kinds.py)
    ranks = _module_ranks(weights, shapes, rank, cfg.get("rank_pattern"))
    return AdapterInfo(
        max([rank, *ranks.values()]),
        float(cfg.get("lora_alpha", rank)),
        tuple(sorted(str(t) for t in targets)),
        tuple(sorted(shapes)),
        shapes,
        ranks,
    )


def _module_ranks(
    weights: Path, shapes: dict[str, tuple[int, ...]], r: int, rank_pattern: Any
) -> dict[str, int]:
    """Each adapted module's rank, from its tensors; InvalidAdapterError where a pair is
    incomplete, not 2-D, disagrees with itself or with the rank the config declares."""
    pairs: dict[str, dict[str, tuple[int, ...]]] = {}
    for name, shape in shapes.items():
        part = next(
            (p for p in ("A", "B") for m in (f".lora_{p}.", f".lora_embedding_{p}") if m in name), None
        )
        if part is None:
            continue
        if len(shape) != 2 or min(shape) < 1:
            raise InvalidAdapterError(f"{weights}: {name} has shape {list(shape)}; a LoRA factor is 2-D")
        pairs.setdefault(next(iter(lora_modules((name,)))), {})[part] = shape
    ranks = {}
    for module, pair in sorted(pairs.items()):
        if set(pair) != {"A", "B"}:
            raise InvalidAdapterError(f"{weights}: {module} has lora_{next(iter(pair))} but not its pair")
        a, b = pair["A"][0], pair["B"][1]
        declared = _pattern_rank(rank_pattern, module) or r
        if a != b or a != declared:
            raise InvalidAdapterError(
                f"{weights}: {module} holds rank {a} (lora_A) and {b} (lora_B), but {CONFIG} declares "
                f"r={declared}: the tensors and the config disagree"
            )
        ranks[module] = a
    if not ranks:
        raise InvalidAdapterError(f"{weights}: no LoRA tensors (lora_A/lora_B)")
    return ranks


def _pattern_rank(pattern: Any, module: str) -> int | None:
    """PEFT's `rank_pattern` rule, the first key that is a suffix of the module at a '.' boundary,
    with keys taken literally (PEFT reads them as regular expressions: from an untrusted file, a
    pattern could take exponential time)."""
    for key, value in pattern.items() if isinstance(pattern, dict) else ():
        if isinstance(value, int) and (module == key or module.endswith(f".{key}")):
            return value
    return None


def check_adapter(folder: Path, base_shapes: dict[str, list[int]]) -> AdapterInfo:
    """The one validation every path runs (push from `registry add`, Hub pull, serving's load, the
    vLLM resolver): a valid adapter (`validate_adapter`) that fits the base model's layers."""
    info = validate_adapter(folder)
    check_against_base(folder, info, base_shapes)
    return info


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
    """Every adapted module exists in the base model as a 2-D weight, and each LoRA pair fits that
    layer at the module's rank (`[rank, in]` and `[out, rank]`; embeddings `[rank, vocab]`, `[dim, rank]`)."""
    weights = folder / WEIGHTS
    missing = sorted(m for m in info.module_ranks if len(base_shapes.get(f"{m}.weight", ())) != 2)
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise InvalidAdapterError(
            f"{weights}: target modules not in the base model: {', '.join(missing[:5])}{more} "
            "(was it trained on another base model?)"
        )
    for name, shape in info.shapes.items():
        module = next(iter(lora_modules((name,))))
        if module not in info.module_ranks:
            continue
        rank, (out_features, in_features) = info.module_ranks[module], base_shapes[f"{module}.weight"]
        expected = {
            ".lora_A.": [rank, in_features],
            ".lora_B.": [out_features, rank],
            ".lora_embedding_A": [rank, out_features],
            ".lora_embedding_B": [in_features, rank],
        }
        want = next((v for k, v in expected.items() if k in name), None)
        if want is not None and list(shape) != want:
            raise InvalidAdapterError(
                f"{weights}: {name} has shape {list(shape)}, expected {want} "
                f"(rank {rank} and the base model's layer {[out_features, in_features]})"
            )
