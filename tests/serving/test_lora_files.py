"""vLLM's LoRA loader with serving/engine/cpu/lora_files.py: an adapter file read in one pass and cast in
one call, the same weights as vLLM's own reading; files it cannot check fail as they did."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest

from tests.serving.fixtures import random_adapter

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture
def loader(monkeypatch: pytest.MonkeyPatch) -> Any:
    """vLLM's LoRAModel.from_local_checkpoint, as the plugin leaves it; vLLM's own afterwards."""
    from vllm.lora import lora_model

    from serving.engine.cpu import lora_files

    model_cls, real = lora_model.LoRAModel, lora_model.safetensors
    monkeypatch.setattr(lora_model, "safetensors", real)  # both undone after the test
    monkeypatch.setattr(model_cls, "from_local_checkpoint", model_cls.__dict__["from_local_checkpoint"])
    original = model_cls.from_local_checkpoint
    lora_files.install()

    def stock(*args: Any, **kwargs: Any) -> Any:
        with monkeypatch.context() as m:
            m.setattr(lora_model, "safetensors", real)
            return original(*args, **kwargs)

    return stock, model_cls.from_local_checkpoint


def load(method: Any, path: Path, **kwargs: Any) -> Any:
    import torch
    from vllm.lora.peft_helper import PEFTHelper

    return method(
        str(path),
        set(TARGETS),
        peft_helper=PEFTHelper.from_local_dir(str(path), 4096),
        lora_model_id=1,
        device="cpu",
        dtype=kwargs.pop("dtype", torch.bfloat16),
        **kwargs,
    )


def test_an_adapter_is_read_in_one_pass_and_cast_once_with_the_weights_vllm_reads(
    tmp_path: Path, loader: Any
) -> None:
    import torch

    from serving.engine.cpu import lora_files

    stock, ours = loader
    path = random_adapter(tmp_path / "a", 8, TARGETS)  # float32 on disk, as peft saves it
    for dtype in (torch.bfloat16, torch.float32):
        before = dict(lora_files.STATS)
        theirs, mine = load(stock, path, dtype=dtype), load(ours, path, dtype=dtype)
        assert lora_files.STATS["one_read"] == before["one_read"] + 1
        assert lora_files.STATS["fallback"] == before["fallback"]
        assert theirs.loras.keys() == mine.loras.keys() and len(mine.loras) == 7 * 2  # tiny: 2 layers
        for key, lora in theirs.loras.items():
            for a, b in ((lora.lora_a, mine.loras[key].lora_a), (lora.lora_b, mine.loras[key].lora_b)):
                assert b.dtype == dtype and torch.equal(a, b), key  # the same rounding, bit for bit
            assert lora.scaling == mine.loras[key].scaling
        storages = {w.untyped_storage().data_ptr() for x in mine.loras.values() for w in (x.lora_a, x.lora_b)}
        assert len(storages) == 1, "every weight is a view of the one buffer read (and cast)"
        for key, lora in theirs.loras.items():  # vLLM scales B in place (optimize): the buffer is writable
            assert torch.equal(mine.loras[key].optimize().lora_b, lora.optimize().lora_b), key


def test_a_file_it_cannot_check_fails_as_it_did_and_mixed_dtypes_are_read_as_they_are(
    tmp_path: Path, loader: Any
) -> None:
    import torch
    from safetensors.torch import save_file

    from serving.engine.cpu import lora_files

    stock, ours = loader
    path = random_adapter(tmp_path / "a", 4, TARGETS)
    weights = path / "adapter_model.safetensors"
    data = weights.read_bytes()
    for name, broken in (
        ("truncated", data[: len(data) // 2]),
        ("header past the end", struct.pack("<Q", len(data)) + data[8:]),
    ):
        weights.write_bytes(broken)
        before = lora_files.STATS["fallback"]
        with pytest.raises(Exception) as theirs:
            load(stock, path)
        with pytest.raises(Exception) as mine:
            load(ours, path)
        assert type(mine.value) is type(theirs.value) and str(mine.value) == str(theirs.value), name
        assert lora_files.STATS["fallback"] == before + 1, name
    # one matrix in float16, the rest float32: no single cast; each read as it is, then vLLM's .to
    from safetensors import safe_open

    weights.write_bytes(data)
    with safe_open(str(weights), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 # safe_open has no __iter__
    first = sorted(tensors)[0]
    tensors[first] = tensors[first].half()
    save_file(tensors, str(weights), metadata={"format": "pt"})
    theirs, mine = load(stock, path), load(ours, path)
    for key, lora in theirs.loras.items():
        other = mine.loras[key]
        assert torch.equal(lora.lora_a, other.lora_a) and torch.equal(lora.lora_b, other.lora_b), key
    data = weights.read_bytes()
    header = json.loads(data[8 : 8 + struct.unpack("<Q", data[:8])[0]])
    assert header[first]["dtype"] == "F16"
