"""How training spreads over several devices: `training.strategy` and its shipped presets.

`auto` and `ddp` are plain data parallelism (every process holds the whole model, gradients are
averaged: the Trainer's DDP under torchrun/accelerate, gloo on CPU); `fsdp` shards parameters,
gradients and optimizer state (PyTorch FSDP through the Trainer's `fsdp`/`fsdp_config`);
`deepspeed` hands the step to DeepSpeed ZeRO (the Trainer's `deepspeed`). The presets live in
`trainer/configs/strategies/`; `training.strategy_config` picks one by name or points at a file.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trainer.config import TrainConfig

STRATEGIES = ("auto", "ddp", "fsdp", "deepspeed")
PRESETS_DIR = Path(__file__).parent / "configs" / "strategies"
"""The shipped presets: fsdp-lora, fsdp-qlora (FSDP full shard), zero2, zero3 (DeepSpeed ZeRO)."""
DEFAULT_PRESET = {"fsdp": "fsdp-lora", "deepspeed": "zero2"}
"""The preset used when `training.strategy_config` is not set (fsdp with lora.quantize: fsdp-qlora)."""


def preset_path(config: TrainConfig) -> Path | None:
    """The JSON file of the run's fsdp/deepspeed settings (None for auto/ddp)."""
    t = config.training
    if t.strategy not in DEFAULT_PRESET:
        return None
    name = t.strategy_config or DEFAULT_PRESET[t.strategy]
    if t.strategy == "fsdp" and not t.strategy_config and config.lora.quantize:
        name = "fsdp-qlora"
    shipped = PRESETS_DIR / f"{name}.json"
    return shipped if shipped.is_file() else Path(name).expanduser()


def resolved(config: TrainConfig, world_size: int) -> str:
    """What the run actually does: `single` (one process), `ddp`, `fsdp` or `deepspeed`."""
    strategy = config.training.strategy
    if strategy in ("auto", "ddp"):
        return "ddp" if world_size > 1 else "single"
    return strategy


def lineage(config: TrainConfig, world_size: int) -> dict[str, Any]:
    """The `distributed` record of a version: world size, strategy, and the preset with its settings."""
    path = preset_path(config)
    return {
        "world_size": world_size,
        "strategy": resolved(config, world_size),
        "requested": config.training.strategy,
        "preset": path.stem if path else None,
        "settings": json.loads(path.read_text()) if path else None,
    }


def trainer_arguments(config: TrainConfig) -> dict[str, Any]:
    """The `TrainingArguments` keywords of the strategy (fsdp/fsdp_config or deepspeed)."""
    path = preset_path(config)
    if path is None:
        return {}
    if config.training.strategy == "deepspeed":
        return {"deepspeed": str(path)}
    settings = json.loads(path.read_text())
    return {"fsdp": settings["fsdp"], "fsdp_config": settings.get("fsdp_config", {})}


def problems(config: TrainConfig, world_size: int, cuda: bool) -> list[str]:
    """What keeps this machine (or this launch) from running `training.strategy`; empty: nothing."""
    t = config.training
    if t.strategy not in STRATEGIES:
        return [f"training.strategy must be one of {', '.join(STRATEGIES)}; got {t.strategy!r}"]
    out = []
    if world_size > 1 and t.objective != "sft":
        out.append(
            f"training.objective={t.objective} runs on one process; launch it without torchrun/accelerate"
        )
    if t.strategy_config and t.strategy not in DEFAULT_PRESET:
        out.append(f"training.strategy_config is for strategy fsdp or deepspeed, not {t.strategy}")
    path = preset_path(config)
    if path is not None and not path.is_file():
        shipped = ", ".join(sorted(p.stem for p in PRESETS_DIR.glob("*.json")))
        out.append(f"training.strategy_config: {path}: no such preset or file (presets: {shipped})")
    if t.strategy == "deepspeed":
        if importlib.util.find_spec("deepspeed") is None:
            out.append(
                "training.strategy=deepspeed needs the deepspeed package (pip install deepspeed) "
                "and CUDA GPUs; use strategy ddp or fsdp"
            )
        elif not cuda:
            out.append("training.strategy=deepspeed needs CUDA GPUs; on CPU use strategy auto or ddp")
    if t.strategy == "fsdp" and config.lora.quantize:
        from trainer.hardware import bitsandbytes_problem

        problem = bitsandbytes_problem()
        if problem or not cuda:
            out.append(
                "training.strategy=fsdp with lora.quantize=nf4 (FSDP + QLoRA) needs CUDA GPUs and "
                f"bitsandbytes with 4-bit quant storage{': ' + problem if problem else ''}; "
                "drop lora.quantize or use strategy ddp"
            )
    if t.strategy == "fsdp" and not cuda:
        out.append(
            "training.strategy=fsdp needs CUDA GPUs (its sharded parameters live on the GPUs); "
            "on CPU use strategy auto or ddp"
        )
    return out
