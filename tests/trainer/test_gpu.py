"""Training on a CUDA GPU: LoRA in bf16 and QLoRA (4-bit NF4, bitsandbytes), pushed and verified.

Skipped without CUDA (tests/conftest.py); run on a GPU machine with `pytest -m gpu`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("quantize", [None, "nf4"], ids=["lora-bf16", "qlora-nf4"])
def test_a_run_trains_on_the_gpu_and_its_version_verifies(tmp_path: Path, quantize: str | None) -> None:
    import torch
    from click.testing import CliRunner
    from rich.console import Console

    from cli.main import cli
    from registry.store import Registry
    from trainer.config import load_config
    from trainer.publish import publish
    from trainer.recipe import run

    overrides = [
        "base_model=embedded/tiny-llama",
        "name=gpu",
        f"output_dir={tmp_path / 'runs'}",
        "training.max_steps=8",
        "training.batch_size=8",
        "training.lr=0.01",
        "training.dtype=bf16",
        "eval.max_examples=8",
        "eval.max_new_tokens=12",
        "data.max_seq_len=96",
        "data.overlong=truncate",  # rows of ~100-150 tokens: cut the prompt, keep the answer
    ]
    if quantize:
        overrides.append(f"lora.quantize={quantize}")
    torch.cuda.reset_peak_memory_stats()
    result = run(load_config(None, overrides), console=Console(quiet=True))
    assert torch.cuda.max_memory_allocated() > 0  # the steps ran on the GPU
    assert result.lineage["training"]["steps"] == 8
    assert result.lineage["config"]["lora"]["quantize"] == quantize
    logged = [json.loads(line) for line in (result.run_dir / "train_log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in logged if "loss" in r]
    assert losses and all(math.isfinite(x) for x in losses)
    assert set(result.metrics) == {"base", "adapter"}  # eval ran base vs adapter, on the GPU too
    registry = str(tmp_path / "registry")
    ref = publish(result, registry)
    assert Registry(registry).verify_all() == {ref: None}
    print(f"\n{quantize or 'lora'}: losses {losses[0]:.3f} -> {losses[-1]:.3f}, metrics {result.metrics}")
    # the next version continues from this one's weights, on the GPU too
    again = run(load_config(None, [*overrides, f"init_adapter={ref}"]), Console(quiet=True), registry)
    assert again.lineage["init_adapter"]["ref"] == ref
    # `platform eval` of the version on the GPU
    out = CliRunner().invoke(
        cli,
        [
            "eval",
            ref,
            "--data",
            "sample:support-tickets",
            "--max-examples",
            "4",
            "--max-new-tokens",
            "8",
            "--registry",
            registry,
        ],
    )
    assert out.exit_code == 0, out.output
