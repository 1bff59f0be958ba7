"""`platform registry add`: a peft folder trained elsewhere, checked like a push from the trainer."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import cli


@pytest.fixture(scope="module")
def peft_folder(tmp_path_factory: pytest.TempPathFactory, tiny_base) -> Path:  # type: ignore[no-untyped-def]
    """A real peft save (as Axolotl or TRL would leave it) for the tiny model."""
    from testkit.adapters import make_adapters

    return make_adapters(tiny_base.path, 1, 4, tmp_path_factory.mktemp("peft"), ["q_proj", "v_proj"])[0]


def add(registry: Path, path: Path, *extra: str) -> tuple[int, str]:
    args = ["registry", "add", str(path), "--registry", str(registry), *extra]
    result = CliRunner().invoke(cli, args)
    assert "Traceback" not in result.output
    return result.exit_code, result.output


def edited(src: Path, dst: Path, rename: dict[str, str] | None = None, **config: object) -> Path:
    """A copy of `src` with tensors renamed and adapter_config.json fields replaced."""
    from safetensors.torch import load_file, save_file

    dst.mkdir()
    tensors = load_file(str(src / "adapter_model.safetensors"))
    for old, new in (rename or {}).items():
        tensors = {k.replace(old, new): v for k, v in tensors.items()}
    save_file(tensors, str(dst / "adapter_model.safetensors"))
    cfg = json.loads((src / "adapter_config.json").read_text())
    (dst / "adapter_config.json").write_text(json.dumps({**cfg, **config}))
    return dst


def test_add_records_the_base_model_and_lists_the_version(
    peft_folder: Path, tmp_path: Path, tiny_base
) -> None:  # type: ignore[no-untyped-def]
    reg = tmp_path / "reg"
    code, out = add(reg, peft_folder, "--name", "external")
    assert code == 0, out
    assert "as external@1" in out
    shown = CliRunner().invoke(cli, ["registry", "show", "external@1", "--json", "--registry", str(reg)])
    lineage = json.loads(shown.output)["lineage"]
    assert (lineage["base_model"], lineage["base_model_sha256"]) == (tiny_base.id, tiny_base.weights_sha256)
    assert lineage["added_from"]["rank"] == 4
    assert sorted(lineage["added_from"]["target_modules"]) == ["q_proj", "v_proj"]
    table = CliRunner().invoke(cli, ["registry", "show", "external@1", "--registry", str(reg)])
    assert table.exit_code == 0 and "external@1" in table.output and tiny_base.id in table.output
    again = add(reg, peft_folder, "--name", "external", "--base-model", "tiny")
    assert again[0] == 0 and "as external@2" in again[1]


def test_pickle_weights_are_refused(peft_folder: Path, tmp_path: Path) -> None:
    folder = tmp_path / "bin-only"
    folder.mkdir()
    shutil.copy(peft_folder / "adapter_config.json", folder)
    (folder / "adapter_model.bin").write_bytes(b"\x80\x04pickle")
    code, out = add(tmp_path / "reg", folder, "--name", "x")
    assert code == 1
    assert "adapter_model.bin" in out and "safetensors" in out
    assert not (tmp_path / "reg" / "x").exists()


def test_targets_absent_from_the_base_are_named(peft_folder: Path, tmp_path: Path) -> None:
    folder = edited(peft_folder, tmp_path / "other", {"q_proj": "qkv_proj"})
    code, out = add(tmp_path / "reg", folder, "--name", "x")
    assert code == 1
    assert "adapter_model.safetensors: target modules not in the base model" in out
    assert "model.layers.0.self_attn.qkv_proj" in out


def test_rank_that_does_not_fit_the_weights_is_named(peft_folder: Path, tmp_path: Path) -> None:
    code, out = add(tmp_path / "reg", edited(peft_folder, tmp_path / "r8", r=8), "--name", "x")
    assert code == 1
    assert "holds rank 4" in out and "declares r=8" in out and "disagree" in out


def test_unknown_base_model_and_missing_folder_are_clear(peft_folder: Path, tmp_path: Path) -> None:
    code, out = add(tmp_path / "reg", peft_folder, "--name", "x", "--base-model", "embedded/nope")
    assert code == 1 and "unknown embedded base model 'embedded/nope'" in out
    folder = edited(peft_folder, tmp_path / "anon", base_model_name_or_path=None)
    code, out = add(tmp_path / "reg", folder, "--name", "x")
    assert code == 1 and "adapter_config.json: no base_model_name_or_path" in out and "--base-model" in out
    code, out = add(tmp_path / "reg", tmp_path / "nope", "--name", "x")
    assert code == 2 and "does not exist" in out
    code, out = add(tmp_path / "reg", peft_folder, "--name", "../x")
    assert code == 1 and "invalid name '../x'" in out
