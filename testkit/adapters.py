"""Random (non-zero) LoRA adapters built by peft, and pushing them into a registry."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def random_adapter(folder: Path, rank: int, targets: list[str]) -> Path:
    """A LoRA with random (non-zero) B on the tiny model, built by peft: a valid adapter of any rank."""
    import torch
    from peft import LoraConfig, get_peft_model

    from registry.basemodels import resolve_base_model
    from trainer.model import load_base

    torch.manual_seed(rank)
    model = get_peft_model(
        load_base(resolve_base_model("tiny")), LoraConfig(r=rank, lora_alpha=rank, target_modules=targets)
    )
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    model.save_pretrained(folder, safe_serialization=True)
    return folder


def make_adapters(
    base_path: Path, n: int, rank: int, out: Path, targets: str | list[str] = "all-linear"
) -> list[Path]:
    """n random LoRA adapters (non-zero B) for the base model, saved as peft folders."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    paths = []
    for i in range(n):
        model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
        torch.manual_seed(100 + i)
        lora = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets))
        with torch.no_grad():
            for name, p in lora.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.01)
        path = out / f"adapter{i}"
        lora.save_pretrained(path, safe_serialization=True)
        paths.append(path)
    return paths


def push_adapters(registry: Path, base: Any, paths: list[Path], prefix: str = "load") -> list[str]:
    """Push `paths` as `<prefix>0`, `<prefix>1`, ... with a lineage naming the base; their refs."""
    from registry.store import Registry

    reg = Registry(registry)
    lineage = {
        "base_model": base.id,
        "base_model_sha256": base.weights_sha256,
        "source": "loadtests (random weights)",
    }
    return [reg.push(f"{prefix}{i}", p, lineage).ref for i, p in enumerate(paths)]


def train_tiny(
    registry: Path, out: Path, name: str, data: str, seed: int, steps: int = 8, extra: tuple[str, ...] = ()
) -> str:
    """A version of `name` trained on the tiny model in a few steps (tests and benchmarks);
    `extra`: more `key=value` config overrides."""
    from rich.console import Console

    from trainer.config import load_config
    from trainer.publish import publish
    from trainer.recipe import run

    config = load_config(
        None,
        [
            "base_model=embedded/tiny-llama",
            f"name={name}",
            f"output_dir={out}",
            f"data.path={data}",
            f"training.max_steps={steps}",
            "training.lr=0.01",
            f"training.seed={seed}",
            "eval.max_examples=2",
            "eval.max_new_tokens=4",
            "eval.compare_base=false",
            "data.max_seq_len=96",
            "data.overlong=truncate",  # rows of ~100-150 tokens: cut the prompt, keep the answer
            "lora.r=8",
            "lora.alpha=16",
            *extra,
        ],
    )
    return publish(run(config, console=Console(quiet=True)), str(registry))
