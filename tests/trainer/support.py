"""Helpers shared by the trainer tests."""

from __future__ import annotations


def bnb_4bit_skip_reason() -> str | None:
    """Why bitsandbytes cannot quantize to 4 bits on this machine (None: it can; its CPU backend)."""
    try:
        import bitsandbytes as bnb
        import torch

        bnb.functional.quantize_4bit(torch.randn(64, 64), quant_type="nf4")
    except (ImportError, RuntimeError, NotImplementedError) as exc:
        return f"bitsandbytes cannot quantize to 4 bits here: {exc}"
    return None
