"""`platform export`: a version as a GGUF LoRA, a merged GGUF model, and an Ollama folder; each
reads back with the gguf package's reader (the one llama.cpp's tools use)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from cli.main import cli
from registry.store import Registry


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory, tiny_base: Any) -> Path:
    """A registry with a plain LoRA (r=4, alpha=8) and an rsLoRA (r=4, alpha=8) on q, k and v."""
    from testkit.adapters import make_adapters

    root = tmp_path_factory.mktemp("gguf")
    folder = make_adapters(tiny_base.path, 1, 4, root / "peft", ["q_proj", "k_proj", "v_proj"])[0]
    cfg = json.loads((folder / "adapter_config.json").read_text())
    assert (cfg["r"], cfg["lora_alpha"]) == (4, 8)
    reg = Registry(root / "reg")
    lineage = {"base_model": tiny_base.id, "base_model_sha256": tiny_base.weights_sha256}
    reg.push("plain", folder, lineage)
    (folder / "adapter_config.json").write_text(json.dumps({**cfg, "use_rslora": True}))
    reg.push("rs", folder, lineage)
    return root / "reg"


def export(registry: Path, ref: str, out: Path, *extra: str) -> None:
    args = ["export", ref, "--output", str(out), "--registry", str(registry), *extra]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output


def fields(path: Path) -> dict[str, Any]:
    import gguf

    reader = gguf.GGUFReader(str(path))
    return {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}


def test_the_adapter_reads_back_as_a_llama_cpp_lora(registry: Path, tmp_path: Path, tiny_base: Any) -> None:
    import gguf
    from safetensors.numpy import load_file

    export(registry, "plain@1", tmp_path / "out")
    path = tmp_path / "out" / "adapter.gguf"
    kv = fields(path)
    assert (kv["general.type"], kv["adapter.type"], kv["general.architecture"]) == (
        "adapter",
        "lora",
        "llama",
    )
    assert kv["adapter.lora.alpha"] == 8.0
    tensors = {t.name: t for t in gguf.GGUFReader(str(path)).tensors}
    expected = {f"blk.{i}.attn_{m}.weight.lora_{ab}" for i in (0, 1) for m in "qkv" for ab in "ab"}
    assert set(tensors) == expected
    hidden, kv_out = 256, 128  # the tiny model: 4 heads x 64, 2 kv heads x 64
    # gguf lists dimensions innermost first: lora_a is [r, in] in torch, lora_b [out, r]
    assert list(tensors["blk.0.attn_q.weight.lora_a"].shape) == [hidden, 4]
    assert list(tensors["blk.0.attn_q.weight.lora_b"].shape) == [4, hidden]
    assert list(tensors["blk.1.attn_k.weight.lora_b"].shape) == [4, kv_out]
    source = load_file(str(Registry(registry).get("plain@1").path / "adapter_model.safetensors"))
    v_b = source["base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight"]
    assert np.array_equal(np.asarray(tensors["blk.0.attn_v.weight.lora_b"].data), v_b)  # v: as trained
    k_b = source["base_model.model.model.layers.0.self_attn.k_proj.lora_B.weight"]
    got = np.asarray(tensors["blk.0.attn_k.weight.lora_b"].data)
    assert not np.array_equal(got, k_b) and np.array_equal(
        np.sort(got, axis=0), np.sort(k_b, axis=0)
    )  # rows permuted
    for f in ("README.md", "lineage.json", "export.json"):
        assert (tmp_path / "out" / f).is_file()  # the model card and lineage travel with it


def test_rslora_alpha_keeps_its_scale_in_llama_cpp(registry: Path, tmp_path: Path) -> None:
    export(registry, "rs@1", tmp_path / "rs")
    # llama.cpp scales by alpha/r; rsLoRA's alpha/sqrt(r) is kept with alpha * sqrt(r)
    assert fields(tmp_path / "rs" / "adapter.gguf")["adapter.lora.alpha"] == pytest.approx(8 * math.sqrt(4))


def test_merged_q8_0_and_ollama_folders(registry: Path, tmp_path: Path) -> None:
    import gguf

    export(registry, "plain@1", tmp_path / "merged", "--format", "gguf-merged", "--quant", "q8_0")
    merged = tmp_path / "merged" / "plain-1-q8_0.gguf"
    kv = fields(merged)
    assert kv["general.type"] == "model" and kv["tokenizer.ggml.model"] == "gpt2"
    assert len(kv["tokenizer.ggml.tokens"]) == 1024 and "tokenizer.chat_template" in kv
    types = {t.name: t.tensor_type for t in gguf.GGUFReader(str(merged)).tensors}
    assert types["blk.0.attn_q.weight"] == gguf.GGMLQuantizationType.Q8_0
    assert types["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32

    export(registry, "plain@1", tmp_path / "ollama", "--format", "ollama")
    modelfile = (tmp_path / "ollama" / "Modelfile").read_text().splitlines()
    assert "FROM ./base-f16.gguf" in modelfile and "ADAPTER ./adapter.gguf" in modelfile
    assert fields(tmp_path / "ollama" / "base-f16.gguf")["general.type"] == "model"
    assert (tmp_path / "ollama" / "chat_template.jinja").is_file()


def test_a_full_output_folder_is_refused(registry: Path, tmp_path: Path) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    result = CliRunner().invoke(
        cli, ["export", "plain@1", "-o", str(tmp_path / "full"), "--registry", str(registry)]
    )
    assert result.exit_code == 1 and "not empty" in result.output and "Traceback" not in result.output
