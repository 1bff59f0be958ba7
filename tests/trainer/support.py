"""Helpers shared by the trainer tests."""

from __future__ import annotations

from typing import Any

from trainer.plan import Plan


def bnb_4bit_skip_reason() -> str | None:
    """Why bitsandbytes cannot quantize to 4 bits on this machine (None: it can; its CPU backend)."""
    try:
        import bitsandbytes as bnb
        import torch

        bnb.functional.quantize_4bit(torch.randn(64, 64), quant_type="nf4")
    except (ImportError, RuntimeError, NotImplementedError) as exc:
        return f"bitsandbytes cannot quantize to 4 bits here: {exc}"
    return None


def fixed_plan(train: int, val: int, test: int = 0, **changes: Any) -> Plan:
    """A Plan written out (not computed by make_plan): `train` training rows, batch 8, one epoch, fp32 on CPU."""
    fields: dict[str, Any] = {
        "rows": {"train": train, "val": val, "test": test},
        "tokens": {"p50": 1, "p95": 1, "max": 1},
        "overlong": {"max_seq_len": 512, "policy": "drop", "rows": 0, "dropped": 0, "truncated": 0},
        "items": train,
        "world_size": 1,
        "effective_batch": 8,
        "steps_per_epoch": train // 8,
        "steps": train // 8,
        "epochs": 1,
        "warmup_steps": 0,
        "eval_every": 0,
        "precision": "fp32",
        "device": "cpu",
    }
    return Plan(**(fields | changes))
