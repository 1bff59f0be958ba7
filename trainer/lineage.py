"""What a run records about how it was trained: arguments, hardware, code, libraries, throughput.

Written into `lineage.json` next to the adapter and into the registry version, so a version can
be traced back to the exact trainer settings, machine and code that produced it.
"""

from __future__ import annotations

import os
import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

LIBRARIES = (
    "torch",
    "transformers",
    "peft",
    "accelerate",
    "bitsandbytes",
    "trl",
    "datasets",
    "tokenizers",
    "safetensors",
    "mlflow-skinny",
    "lora-platform",
)
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
"""CPU instruction sets that decide whether bf16 runs natively (recorded when they are present)."""


def library_versions() -> dict[str, str]:
    """Python and the installed versions of the libraries a run depends on."""
    out = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def code_revision() -> dict[str, Any]:
    """The git commit of the checkout the trainer runs from (and whether it has local changes),
    else the installed package version."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        sha = ""
    if sha:
        return {"git_sha": sha, "dirty": bool(status.strip())}
    try:
        return {"package_version": version("lora-platform")}
    except PackageNotFoundError:
        return {"package_version": "unknown"}


def _cpu() -> dict[str, Any]:
    name, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                name = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    except OSError:
        pass
    return {"cpu": name, "cpu_flags": [f for f in CPU_FLAGS if f in flags], "cpu_count": os.cpu_count()}


def hardware(args: Any) -> dict[str, Any]:
    """The device the Trainer used, how many of them, and the distributed world size."""
    import torch

    device = args.device
    record: dict[str, Any] = {"device": device.type, **_cpu()}
    if device.type == "cuda":
        record["device_count"] = torch.cuda.device_count()
        record["device_name"] = torch.cuda.get_device_name(device)
        record["cuda"] = torch.version.cuda
    else:
        record["device_count"] = 1
        record["torch_threads"] = torch.get_num_threads()
    record["world_size"] = args.world_size
    record["process_index"] = args.process_index
    record["n_gpu"] = args.n_gpu
    return record


def training_record(trainer: Any, wall_seconds: float) -> dict[str, Any]:
    """Every TrainingArguments value the run used, the hardware, and its token throughput.

    `tokens` counts real (non-padding) input tokens: the Trainer sums the attention mask of every
    batch it trains on (`include_num_input_tokens_seen="non_padding"`).
    """
    state = trainer.state
    tokens = int(state.num_input_tokens_seen or 0)
    return {
        "arguments": trainer.args.to_dict(),
        "hardware": hardware(trainer.args),
        "code_revision": code_revision(),
        "tokens": tokens,
        "tokens_per_second": round(tokens / wall_seconds, 1) if wall_seconds > 0 else None,
        "wall_seconds": round(wall_seconds, 2),
        "optimizer_steps": state.global_step,
        "epochs": state.epoch,
    }
