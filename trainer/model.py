"""Base model loading and the LoRA / QLoRA wrapping."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from registry.basemodels import BaseModel
from trainer.config import LoraSettings
from trainer.errors import ModelError

CHECKPOINTING_KWARGS = {"use_reentrant": False}
"""Non-reentrant activation checkpointing: works with frozen inputs, LoRA, QLoRA and DDP."""


def torch_dtype(name: str) -> Any:
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16}[name]


def load_tokenizer(base: BaseModel) -> Any:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base.path)
    if tok.chat_template is None:
        raise ModelError(f"{base.id}: the tokenizer has no chat template; use an instruct/chat model")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def accelerator() -> str | None:
    """This process's CUDA device (`LOCAL_RANK` under torchrun/accelerate), or None on CPU."""
    import torch

    if not torch.cuda.is_available():
        return None
    return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"


def load_base(
    base: BaseModel,
    dtype: str = "fp32",
    quantize: str | None = None,
    attn_implementation: str | None = None,
    fsdp: bool = False,
) -> Any:
    """The base model, on this process's GPU when there is one (so the evaluation before training
    runs there too, and a 4-bit model, which cannot be moved after loading, is placed at once).
    `attn_implementation` (e.g. `sdpa`) pins the attention kernel; None lets transformers choose.
    `fsdp` with `quantize` (FSDP + QLoRA): the 4-bit weights are stored in `dtype`, like the
    other weights, so FSDP can flatten and shard them together, and FSDP places them."""
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": torch_dtype(dtype)}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    device = accelerator()
    if device is not None and not (fsdp and quantize):
        kwargs["device_map"] = {"": device}
    if quantize == "nf4":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(  # type: ignore[no-untyped-call]
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch_dtype(dtype),
            **({"bnb_4bit_quant_storage": torch_dtype(dtype)} if fsdp else {}),
        )
    model = AutoModelForCausalLM.from_pretrained(base.path, **kwargs)
    model.config.name_or_path = base.id
    return model


def linear_module_names(model: Any) -> list[str]:
    """Distinct leaf names of the linear layers inside the transformer blocks (not lm_head)."""
    import torch

    names = set()
    for full, module in model.named_modules():
        is_linear = isinstance(module, torch.nn.Linear) or type(module).__name__ in (
            "Linear4bit",
            "Linear8bitLt",
        )
        if is_linear and "lm_head" not in full:
            names.add(full.rsplit(".", 1)[-1])
    return sorted(names)


def resolve_targets(model: Any, targets: list[str] | str) -> list[str]:
    available = linear_module_names(model)
    if targets == "all-linear":
        return available
    unknown = [t for t in targets if t not in available]
    if unknown:
        raise ModelError(
            f"lora.target_modules: unknown module(s) {unknown}; this model's linear modules are: "
            f"{', '.join(available)} (or use all-linear)"
        )
    return list(targets)


def apply_lora(
    model: Any, settings: LoraSettings, gradient_checkpointing: bool = False, init_from: Path | None = None
) -> Any:
    """Wrap the model with a fresh LoRA, or with the trainable weights of the adapter in `init_from`
    (whose rank and target modules must match the settings)."""
    from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training

    targets = resolve_targets(model, settings.target_modules)
    if init_from is not None:
        check_init_adapter(init_from, settings.r, targets)
    if settings.quantize:
        model = prepare_model_for_kbit_training(  # type: ignore[no-untyped-call]
            model,
            use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs=CHECKPOINTING_KWARGS,
        )
    elif gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=CHECKPOINTING_KWARGS)
        # the frozen embeddings give no grad-requiring input to the first checkpointed block;
        # without this the LoRA weights inside it would get no gradient
        model.enable_input_require_grads()
    if init_from is not None:
        return PeftModel.from_pretrained(model, str(init_from), is_trainable=True)
    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=targets,
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def check_init_adapter(folder: Path, rank: int, targets: list[str]) -> None:
    """ModelError unless the adapter in `folder` has this rank and these target modules."""
    config = json.loads((folder / "adapter_config.json").read_text())
    theirs = config.get("target_modules") or []
    theirs = sorted([theirs] if isinstance(theirs, str) else theirs)
    problems = []
    if config.get("r") != rank:
        problems.append(f"its rank is {config.get('r')}, this run's lora.r is {rank}")
    if theirs != sorted(targets):
        problems.append(f"its target modules are {theirs}, this run's are {sorted(targets)}")
    if problems:
        raise ModelError(
            f"init_adapter: cannot continue from it: {'; '.join(problems)}; "
            f"set lora.r={config.get('r')} lora.target_modules=[{','.join(theirs)}]"
        )


@contextlib.contextmanager
def without_kv_cache(model: Any) -> Iterator[None]:
    """`use_cache=False` inside the block (training): with a cache object, transformers ignores
    restarting position ids, so packed rows would attend across their boundaries."""
    config = model.get_base_model().config if hasattr(model, "get_base_model") else model.config
    saved = config.use_cache
    config.use_cache = False
    try:
        yield
    finally:
        config.use_cache = saved
