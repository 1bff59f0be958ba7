"""Adapter files for the engine: vLLM's loader reads an adapter in one pass (part of the plugin).

vLLM reads an adapter from disk (LoRAModel.from_local_checkpoint, on the engine loop) with
safetensors' `safe_open` and one `get_tensor` per tensor: a 7-module r=16 adapter of SmolLM2 has
420 tensors, ~14 us each whatever their size (6.3 ms of a 9.4 ms load; the cast to the serving
dtype is the rest). With many adapters and a CPU cache smaller than their number, a load comes
every few requests (bench.py --many: ~250 per 1000), so the loads took ~5% of the model worker's
time (py-spy). `OneRead` stands in for `safe_open` in vLLM's loader: the file read with one
`readinto` into a tensor, cast to the serving dtype in one call (vLLM's own `.to` per tensor then
has nothing to do: the same rounding, element by element), and every tensor a view of it. A
float32 SmolLM2 adapter: 9.7 -> ~4 ms alone. Whatever it does not recognise
(a header it cannot check, a dtype it does not know, an offset out of line) goes to safetensors
itself, so a bad file fails exactly as before (vLLM refuses the adapter: the server's 422).
"""

from __future__ import annotations

import contextvars
import json
import math
import os
import struct
from typing import Any

HEADER_MAX = 100 * 1024 * 1024
"""safetensors' own limit on the JSON header (bytes)."""

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

    if not isinstance(cast, torch.dtype) or not cast.is_floating_point:
        cast = None
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < 8:
            raise Unread("shorter than its header")
        buf = torch.empty(size, dtype=torch.uint8)
        if f.readinto(memoryview(buf.numpy())) != size:  # type: ignore[arg-type]
            raise Unread("short read")
    (n,) = struct.unpack("<Q", buf[:8].numpy().tobytes())
    if n > HEADER_MAX or 8 + n > size:
        raise Unread("header out of the file")
    try:
        header = json.loads(buf[8 : 8 + n].numpy().tobytes())
    except ValueError as exc:
        raise Unread("header is not JSON") from exc
    if not isinstance(header, dict):
        raise Unread("header is not an object")
    base, data = 8 + n, size - 8 - n
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
        if (base + start) % item:
            raise Unread(f"entry {name!r} alignment")
        whole = wholes.get(dtype)
        if whole is None:
            if base % item:
                raise Unread("data alignment")
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
