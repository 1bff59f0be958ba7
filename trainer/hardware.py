"""What this machine can do for training: CUDA, bf16 instructions, bitsandbytes; the precision to use."""

from __future__ import annotations

import functools

CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
"""CPU flags with native bf16 arithmetic; without them bf16 autocast is emulated and slower than fp32."""


@functools.cache
def has_cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (py-cpuinfo: /proc/cpuinfo on Linux, CPUID elsewhere); empty if unknown."""
    try:
        import cpuinfo

        return frozenset(cpuinfo.get_cpu_info().get("flags", []))
    except Exception:  # an unknown platform: assume no bf16 instructions, so fp32
        return frozenset()


def cpu_has_bf16() -> bool:
    return any(flag in cpu_flags() for flag in CPU_BF16_FLAGS)


def resolve_precision(requested: str) -> str:
    """`auto` as bf16, fp16 or fp32 for this machine; an explicit choice is kept."""
    if requested != "auto":
        return requested
    if has_cuda():
        import torch

        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_bf16() else "fp32"


def cpu_bf16(precision: str) -> bool:
    """Whether a resolved `precision` is a CPU's bf16 (the frozen base's matmuls, trainer/cpu_bf16.py)
    rather than autocast (GPUs)."""
    return precision == "bf16" and not has_cuda()


def autocast_bf16(precision: str) -> bool:
    """Whether a resolved `precision` is bf16 autocast (`bf16=True` for transformers/TRL): a GPU's."""
    return precision == "bf16" and has_cuda()


@functools.cache
def bitsandbytes_problem() -> str | None:
    """Why bitsandbytes' optimizers cannot run here (None: they can)."""
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as exc:
        return f"cannot import bitsandbytes ({exc})"
    return None


def device_summary() -> str:
    """`cuda:<name>` or `cpu (bf16 instructions: yes/no)`, for the plan."""
    if has_cuda():
        import torch

        return f"cuda ({torch.cuda.get_device_name(0)}, {torch.cuda.device_count()} visible)"
    return f"cpu (bf16 instructions: {'yes' if cpu_has_bf16() else 'no'})"
