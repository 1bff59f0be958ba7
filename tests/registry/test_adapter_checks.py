"""One validation path for every way a version arrives: the rank comes from the tensors, and a
Hub pull checks the adapter against the local base model instead of trusting the pulled lineage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from registry.adapter import check_adapter, validate_adapter, weight_shapes
from registry.add import add_folder
from registry.errors import InvalidAdapterError
from registry.hub import pull, push
from registry.store import Registry
from tests.registry.test_hub import hub  # noqa: F401  (the fake Hub fixture)
from tests.registry.test_store import make_adapter

Q = "base_model.model.model.layers.0.self_attn.q_proj"


def crafted(
    folder: Path, r: int, a_shape: tuple[int, int], b_shape: tuple[int, int], **config: object
) -> Path:
    """An adapter whose config says `r` while its q_proj factors have these shapes."""
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    tensors = {f"{Q}.lora_A.weight": torch.zeros(a_shape), f"{Q}.lora_B.weight": torch.zeros(b_shape)}
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    cfg = {"peft_type": "LORA", "r": r, "lora_alpha": 16, "target_modules": ["q_proj"], **config}
    cfg["base_model_name_or_path"] = "tiny"
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    return folder


@pytest.fixture
def lineage(tiny_base) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {"base_model": tiny_base.id, "base_model_sha256": tiny_base.weights_sha256}


@pytest.mark.parametrize(
    ("a_shape", "b_shape"),
    [((128, 256), (256, 128)), ((128, 256), (256, 8)), ((8, 256), (256, 128))],
    ids=["both-128", "a-128", "b-128"],
)
def test_a_config_rank_the_tensors_disagree_with_is_refused_at_push(
    tmp_path: Path, lineage: dict[str, str], a_shape: tuple[int, int], b_shape: tuple[int, int]
) -> None:
    folder = crafted(tmp_path / "crafted", 8, a_shape, b_shape)
    with pytest.raises(InvalidAdapterError, match="declares r=8: the tensors and the config disagree"):
        Registry(tmp_path / "reg").push("crafted", folder, lineage)
    with pytest.raises(InvalidAdapterError, match="disagree"):
        add_folder(Registry(tmp_path / "reg"), folder, "crafted")
    assert Registry(tmp_path / "reg").list_versions() == []


def test_the_rank_is_read_from_the_tensors_with_rank_pattern(tmp_path: Path, tiny_base) -> None:  # type: ignore[no-untyped-def]
    folder = crafted(tmp_path / "pattern", 8, (16, 256), (256, 16), rank_pattern={"q_proj": 16})
    info = check_adapter(folder, weight_shapes(tiny_base.path))
    assert info.rank == 16 and info.module_ranks == {"model.layers.0.self_attn.q_proj": 16}
    import torch
    from safetensors.torch import save_file

    half = crafted(tmp_path / "half", 4, (4, 256), (256, 4))
    save_file({f"{Q}.lora_A.weight": torch.zeros(4, 256)}, str(half / "adapter_model.safetensors"))
    with pytest.raises(InvalidAdapterError, match="has lora_A but not its pair"):
        validate_adapter(half)


def test_a_hub_pull_checks_the_adapter_against_the_local_base_not_the_pulled_lineage(
    hub,  # noqa: F811
    tmp_path: Path,
    lineage: dict[str, str],
) -> None:
    reg = Registry(tmp_path / "reg")
    # a version whose lineage claims this base's sha256 but whose layers are 64 wide (the base's: 256)
    reg.push("narrow", make_adapter(tmp_path / "narrow", size=64), lineage)
    push(reg, "narrow@1", "hf://acme/narrow")
    # and one claiming other base weights
    reg.push(
        "otherbase", make_adapter(tmp_path / "fits", size=256), {**lineage, "base_model_sha256": "ab" * 32}
    )
    push(reg, "otherbase@1", "hf://acme/otherbase")
    local = Registry(tmp_path / "local")
    with pytest.raises(
        InvalidAdapterError, match=r"q_proj.lora_A.weight has shape \[4, 64\], expected \[4, 256\]"
    ):
        pull(local, "hf://acme/narrow@v1", "narrow")
    with pytest.raises(InvalidAdapterError, match="lineage says base weights sha256 abababababab"):
        pull(local, "hf://acme/otherbase@v1", "otherbase")
    assert local.list_versions() == []
    reg.push("good", make_adapter(tmp_path / "good", size=256), lineage)
    push(reg, "good@1", "hf://acme/good")
    got = pull(local, "hf://acme/good@v1", "good")
    assert got.base_sha256 == lineage["base_model_sha256"]
