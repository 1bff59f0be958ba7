"""Precision by device, bitsandbytes optimizers, and gradient checkpointing with LoRA and QLoRA."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.trainer.support import bnb_4bit_skip_reason
from trainer import hardware
from trainer.config import load_config
from trainer.errors import ConfigError


def test_auto_precision_is_bf16_only_on_cpus_with_bf16_instructions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hardware, "has_cuda", lambda: False)
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx2", "avx512f"}))
    assert hardware.resolve_precision("auto") == "fp32"
    for flag in ("avx512_bf16", "amx_bf16"):
        monkeypatch.setattr(hardware, "cpu_flags", lambda flag=flag: frozenset({"avx2", flag}))
        assert hardware.resolve_precision("auto") == "bf16"
    assert hardware.resolve_precision("fp32") == "fp32"


@pytest.mark.skipif(hardware.has_cuda(), reason="checks the refusal on a CPU-only machine")
def test_paged_optimizers_and_fp16_are_refused_without_cuda() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, ["training.optimizer=paged_adamw_8bit", "training.precision=fp16"])
    text = str(err.value)
    assert "paged optimizers need a CUDA GPU" in text and "use adamw_8bit on a CPU" in text
    assert "training.precision=fp16 needs a CUDA GPU" in text


def lora_grads(tiny_base: Any, checkpointing: bool) -> tuple[Any, dict[str, Any]]:
    import torch

    from trainer.config import LoraSettings
    from trainer.model import apply_lora, load_base

    torch.manual_seed(0)
    model = apply_lora(load_base(tiny_base), LoraSettings(r=4, alpha=8), gradient_checkpointing=checkpointing)
    with torch.no_grad():  # non-zero B, so the A matrices get gradients too
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    model.train()
    torch.manual_seed(1)
    ids = torch.randint(0, 500, (2, 24))
    model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
    return model, {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_gradient_checkpointing_gives_lora_the_same_gradients(tiny_base: Any) -> None:
    import torch

    model, with_gc = lora_grads(tiny_base, True)
    assert model.get_base_model().is_gradient_checkpointing
    _, without = lora_grads(tiny_base, False)
    assert with_gc.keys() == without.keys() and len(with_gc) > 0
    for name, grad in with_gc.items():
        assert grad.abs().sum() > 0, name
        torch.testing.assert_close(grad, without[name], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("quantize", [None, "nf4"], ids=["lora-8bit-adamw", "qlora"])
def test_a_step_trains_with_gradient_checkpointing(quantize: str | None, tmp_path: Path) -> None:
    import torch
    from rich.console import Console

    from trainer.recipe import LoRARecipe

    if quantize and bnb_4bit_skip_reason():
        pytest.skip(str(bnb_4bit_skip_reason()))
    overrides = [
        "base_model=tiny",
        f"output_dir={tmp_path}",
        "training.gradient_checkpointing=true",
        "training.max_steps=1",
        "training.batch_size=4",
        "training.grad_accum=1",
        "training.warmup_ratio=0",
        "training.lr=0.01",
        "data.max_seq_len=128",
    ]
    # 8-bit AdamW (bitsandbytes) runs on CPUs too; QLoRA keeps the default optimizer
    overrides += [f"lora.quantize={quantize}"] if quantize else ["training.optimizer=adamw_8bit"]
    recipe = LoRARecipe(load_config(None, overrides), Console(quiet=True))
    recipe.setup()
    assert recipe.model.get_base_model().is_gradient_checkpointing
    recipe.train()
    assert recipe.steps == 1
    lora_b = [p for n, p in recipe.model.named_parameters() if "lora_B" in n]
    assert lora_b and all(torch.count_nonzero(p) > 0 for p in lora_b)  # B starts at zero: it learnt


def test_cpu_bf16_runs_the_frozen_base_in_bf16_and_leaves_it_as_loaded(tiny_base: Any) -> None:
    """`training.precision=bf16` on a CPU: the frozen linears multiply in bf16 inside the block, the
    adapters' gradients stay fp32 and point the same way as fp32's, and afterwards the model computes
    exactly what it did before (its fp32 weights untouched)."""
    import torch

    from trainer.cpu_bf16 import bf16_base_matmuls

    model, fp32_grads = lora_grads(tiny_base, False)
    ids = torch.randint(0, 500, (2, 24))
    with torch.no_grad():
        before = model(input_ids=ids, use_cache=False).logits
    lora_layers = [m for m in model.modules() if hasattr(m, "lora_A") and hasattr(m, "base_layer")]
    model.zero_grad()
    torch.manual_seed(1)
    ids_grads = torch.randint(0, 500, (2, 24))  # lora_grads' batch
    with bf16_base_matmuls(model) as patched:
        assert patched >= len(lora_layers) > 0
        assert all(m.base_layer.weight_bf16.dtype == torch.bfloat16 for m in lora_layers)
        out = model(input_ids=ids_grads, labels=ids_grads, use_cache=False)
        assert out.logits.dtype == torch.float32
        out.loss.backward()
        model.eval()  # validation inside a run: fp32, exactly as outside
        with torch.no_grad():
            assert torch.equal(model(input_ids=ids, use_cache=False).logits, before)
        model.train()
    bf16_grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert bf16_grads.keys() == fp32_grads.keys()
    for name, grad in bf16_grads.items():
        assert grad.dtype == torch.float32, name
        assert not torch.equal(grad, fp32_grads[name]), f"{name}: bf16 matmuls should change the gradient"
        cosine = torch.nn.functional.cosine_similarity(grad.flatten(), fp32_grads[name].flatten(), dim=0)
        assert cosine > 0.99, (name, float(cosine))
    assert not any(hasattr(m.base_layer, "weight_bf16") for m in lora_layers)
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids, use_cache=False).logits, before)


@pytest.mark.skipif(hardware.has_cuda(), reason="the CPU's bf16")
def test_platform_train_in_bf16_on_a_cpu_says_what_runs_in_bf16(tmp_path: Path) -> None:
    import torch
    from rich.console import Console

    from trainer.recipe import LoRARecipe

    overrides = [
        "base_model=tiny",
        f"output_dir={tmp_path}",
        "training.precision=bf16",
        "training.max_steps=2",
        "training.batch_size=4",
        "training.grad_accum=1",
        "training.warmup_ratio=0",
        "training.lr=0.01",
    ]
    recipe = LoRARecipe(load_config(None, overrides), Console(quiet=True))
    recipe.setup()
    assert recipe.plan is not None
    assert "precision: bf16 (the frozen base's matmuls; adapters, attention and loss in fp32)" in (
        "\n".join(recipe.plan.lines())
    )
    frozen = {n: p.detach().clone() for n, p in recipe.model.named_parameters() if not p.requires_grad}
    recipe.train()
    assert recipe.steps == 2
    after = dict(recipe.model.named_parameters())
    assert all(after[n].dtype == torch.float32 and torch.equal(after[n], p) for n, p in frozen.items())
    assert all(p.dtype == torch.float32 for p in recipe.model.parameters() if p.requires_grad)
