"""Adapter files for the engine: vLLM's loader reads an adapter in one pass (part of the plugin).

vLLM reads an adapter from disk (LoRAModel.from_local_checkpoint, on the engine loop) with
safetensors' `safe_open` and one `get_tensor` per tensor: a 7-module r=16 adapter of SmolLM2 has
420 tensors, ~14 us each whatever their size (6.3 ms of a 9.4 ms load; the cast to the serving
dtype is the rest). With many adapters and a CPU cache smaller than their number, a load comes
every few requests (bench.py --many: ~250 per 1000), so the loads took ~5% of the model worker's
time (py-spy). `OneRead` stands in for `safe_open` in vLLM's loader: the file read with one
`readinto` into a tensor, cast to the serving dtype in one call (vLLM's own `.to` per tensor then
has nothing to do: the same rounding, element by element), and every tensor a view of it. A
float32 SmolLM2 adapter through vLLM's from_local_checkpoint: 11-13 -> 6 ms alone. The header is
checked by the registry's own parser (parse_safetensors_header). Whatever it does not recognise
(a header it cannot check, a dtype it does not know, an offset out of line) goes to safetensors
itself, so a bad file fails exactly as before (vLLM refuses the adapter: the server's 422).
"""

from __future__ import annotations

import contextvars
import math
import os
from pathlib import Path
from typing import Any

DTYPES = {"F64": ("float64", 8), "F32": ("float32", 4), "F16": ("float16", 2), "BF16": ("bfloat16", 2)}
"""safetensors dtype -> torch dtype name, bytes; others go to safetensors itself."""

STATS = {"one_read": 0, "fallback": 0}

CAST: contextvars.ContextVar[Any] = contextvars.ContextVar("lora_files_cast", default=None)
"""The dtype vLLM's loader casts every tensor of the adapter it is reading to (None: not known)."""


class Unread(Exception):
    """A file OneRead leaves to safetensors."""


def read_tensors(path: str, cast: Any = None) -> dict[str, Any]:
    """Every tensor of a safetensors file, views of one buffer read in one pass (writable: vLLM
    scales B in place); with `cast` (a torch dtype), views of the data cast to it in one call.
    Raises Unread for anything but a plainly valid file of float tensors."""
    import torch

    from registry.adapter import parse_safetensors_header
    from registry.errors import InvalidAdapterError

    if not isinstance(cast, torch.dtype) or not cast.is_floating_point:
        cast = None
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        buf = torch.empty(size, dtype=torch.uint8)
        if f.readinto(memoryview(buf.numpy())) != size:  # type: ignore[arg-type]
            raise Unread("short read")
    raw, at = memoryview(buf.numpy()), 0  # type: ignore[arg-type]

    def read(n: int) -> bytes:
        nonlocal at
        at += n
        return bytes(raw[at - n : at])

    try:  # the registry's check: length, JSON object, every tensor inside the file
        header, base = parse_safetensors_header(read, size, Path(path).name)
    except (InvalidAdapterError, TypeError, ValueError) as exc:
        raise Unread("header") from exc
    data = size - base
    if len({e.get("dtype") for k, e in header.items() if k != "__metadata__" and isinstance(e, dict)}) > 1:
        cast = None  # one cast per dtype would convert the whole data each time
    tensors: dict[str, Any] = {}
    wholes: dict[str, Any] = {}  # per dtype: the data as one tensor of it
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, item = DTYPES[entry["dtype"]]
            shape = [int(d) for d in entry["shape"]]
            start, end = (int(o) for o in entry["data_offsets"])
        except (KeyError, TypeError, ValueError) as exc:
            raise Unread(f"entry {name!r}") from exc
        numel = math.prod(shape)
        if min(shape, default=0) < 0 or start < 0 or end > data or end - start != numel * item:
            raise Unread(f"entry {name!r} offsets")
        if base % item or start % item:
            raise Unread(f"entry {name!r} alignment")
        whole = wholes.get(dtype)
        if whole is None:
            whole = buf[base : base + data // item * item].view(getattr(torch, dtype))
            wholes[dtype] = whole = whole if cast is None else whole.to(cast)
        strides = [math.prod(shape[i + 1 :]) for i in range(len(shape))]
        tensors[name] = whole.as_strided(shape, strides, whole.storage_offset() + start // item)
    return tensors


class OneRead:
    """`safetensors.safe_open(path, framework="pt")` as vLLM's adapter loader uses it (keys,
    get_tensor), from one read of the file; safetensors' own where read_tensors declines."""

    def __init__(self, path: str, framework: str = "pt", device: str = "cpu") -> None:
        self.args = (path, framework, device)
        self.tensors: dict[str, Any] | None = None
        self.inner: Any = None

    def __enter__(self) -> Any:
        import safetensors

        path, framework, device = self.args
        if framework == "pt" and device == "cpu":
            try:
                self.tensors = read_tensors(path, CAST.get())
                STATS["one_read"] += 1
                return self
            except (Unread, OSError, RuntimeError, ValueError):  # safetensors says what is wrong
                pass
        STATS["fallback"] += 1
        self.inner = safetensors.safe_open(path, framework=framework, device=device)
        return self.inner.__enter__()

    def __exit__(self, *exc: Any) -> None:
        if self.inner is not None:
            self.inner.__exit__(*exc)
        self.tensors = None

    def keys(self) -> list[str]:
        assert self.tensors is not None
        return sorted(self.tensors)  # as safetensors lists them

    def get_tensor(self, name: str) -> Any:
        assert self.tensors is not None
        return self.tensors[name]


class _Safetensors:
    """The `safetensors` module as vLLM's LoRA loader sees it: safe_open is OneRead."""

    safe_open = OneRead

    def __getattr__(self, name: str) -> Any:
        import safetensors

        return getattr(safetensors, name)


def install() -> None:
    """Make vLLM's LoRA loader read adapter files with OneRead (once per process)."""
    from vllm.lora import lora_model

    if isinstance(getattr(lora_model, "safetensors", None), _Safetensors):
        return
    lora_model.safetensors = _Safetensors()  # type: ignore[attr-defined,assignment]
    model_cls = lora_model.LoRAModel
    load = model_cls.from_local_checkpoint.__func__  # type: ignore[attr-defined]

    def from_local_checkpoint(cls: Any, *args: Any, **kwargs: Any) -> Any:
        # vLLM casts each LoRA tensor `.to(device, dtype)`, and leaves full modules (modules_to_save)
        # as they are: the one cast is for adapters without them, read to the CPU
        helper = kwargs.get("peft_helper")
        plain = helper is not None and not getattr(helper, "modules_to_save", None)
        token = CAST.set(kwargs.get("dtype") if plain and kwargs.get("device") == "cpu" else None)
        try:
            return load(cls, *args, **kwargs)
        finally:
            CAST.reset(token)

    model_cls.from_local_checkpoint = classmethod(from_local_checkpoint)  # type: ignore[method-assign,assignment]
