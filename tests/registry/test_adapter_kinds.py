"""Adapter kinds at `registry add` and push: plain LoRA and rsLoRA pass; DoRA, modules_to_save and
added tokens (resized embeddings) are refused with what is unsupported and why."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from cli.main import cli
from registry.errors import InvalidAdapterError
from registry.store import Registry


def peft_save(
    folder: Path, tiny_base: Any, prepare: Callable[[Any], None] | None = None, **lora: Any
) -> Path:
    """A real peft save on the tiny model with these LoraConfig options."""
    import torch
    from peft import LoraConfig, get_peft_model

    from trainer.model import load_base

    torch.manual_seed(0)
    base = load_base(tiny_base)
    if prepare is not None:
        prepare(base)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], **lora))
    model.save_pretrained(folder, safe_serialization=True)
    return folder


def _resize(model: Any) -> None:
    model.resize_token_embeddings(model.get_input_embeddings().weight.shape[0] + 8)


@pytest.mark.parametrize(
    ("kind", "options", "expected"),
    [
        ("dora", {"use_dora": True}, "DoRA (use_dora) is not supported"),
        ("saved", {"modules_to_save": ["lm_head"]}, "modules_to_save ['lm_head'] is not supported"),
        (
            "tokens",
            {"prepare": _resize, "save": {"save_embedding_layers": True}},
            "added tokens / resized embeddings",
        ),
    ],
)
def test_unsupported_kinds_are_refused_at_add_and_push(
    kind: str, options: dict[str, Any], expected: str, tmp_path: Path, tiny_base: Any
) -> None:
    import torch
    from peft import LoraConfig, get_peft_model

    from trainer.model import load_base

    options = dict(options)
    prepare, save = options.pop("prepare", None), options.pop("save", {})
    torch.manual_seed(0)
    base = load_base(tiny_base)
    if prepare is not None:
        prepare(base)
    model = get_peft_model(
        base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], **options)
    )
    folder = tmp_path / kind
    model.save_pretrained(folder, safe_serialization=True, **save)

    reg = tmp_path / "reg"
    result = CliRunner().invoke(cli, ["registry", "add", str(folder), "--name", kind, "--registry", str(reg)])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert expected in result.output and "vLLM" in result.output.replace("\n", " ")
    lineage = {"base_model": tiny_base.id, "base_model_sha256": tiny_base.weights_sha256}
    with pytest.raises(InvalidAdapterError, match="not supported"):
        Registry(reg).push(kind, folder, lineage)
    assert Registry(reg).list_versions() == []


def test_rslora_is_accepted(tmp_path: Path, tiny_base: Any) -> None:
    folder = peft_save(tmp_path / "rs", tiny_base, use_rslora=True)
    result = CliRunner().invoke(
        cli, ["registry", "add", str(folder), "--name", "rs", "--registry", str(tmp_path / "r")]
    )
    assert result.exit_code == 0, result.output
