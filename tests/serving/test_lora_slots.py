"""vLLM's adapter slots (serving/engine/cpu/lora_slots.py): loading an adapter takes no slot, and a step
activates only the adapters new to the slots, evicting ones it does not use."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.serving.fixtures import random_adapter

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.mark.slow
def test_a_step_activates_only_adapters_new_to_the_slots_and_packs_each_once(
    tmp_path: Path, tiny_base: Any
) -> None:
    ranks = {"a": 8, "b": 4, "c": 2}
    adapters = [str(random_adapter(tmp_path / name, rank, TARGETS)) for name, rank in ranks.items()]
    proc = subprocess.run(
        [sys.executable, "-m", "tests.serving.lora_slots_engine", str(tiny_base.path), *adapters],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2]), "PYTHONHASHSEED": "0"},
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    out = json.loads(lines[-1].removeprefix("RESULT "))
    # loading c left a and b in their slots; afterwards each batch brings in one adapter and
    # evicts the one it does not use (vLLM's order also evicted, and re-activated, the other)
    assert [b["activations"] for b in out["batches"]] == [b["new"] for b in out["batches"]], out["batches"]
    assert out["again"] == out["first"], "each adapter must still give its own outputs"
    assert all(len({json.dumps(t) for t in ts}) == 1 for ts in out["outputs"].values()), out["outputs"]
    stats = out["stats"]
    if stats["compiled"]:  # each adapter is packed for the compiled op once; later activations reuse them
        assert stats["slot_reuses"] >= stats["layers_bound"], stats
        assert stats["slot_packs"] <= len(ranks) * stats["layers_bound"], stats


def test_an_adapter_read_from_disk_parses_each_tensor_name_once_per_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """vLLM's LoRA loader parses every tensor name three times through the model's name mapper on
    each load; memoized, a second adapter of the same model parses none, with the same result."""
    import torch
    from vllm.lora import lora_model
    from vllm.lora.peft_helper import PEFTHelper
    from vllm.model_executor.models.utils import WeightsMapper

    from serving.engine.cpu.lora_slots import NameMemo

    paths = [random_adapter(tmp_path / name, 4, TARGETS) for name in ("a", "b")]
    parse = lora_model.parse_fine_tuned_lora_name
    calls: list[str] = []

    def counted(name: str, weights_mapper: Any = None) -> tuple[str, bool]:
        calls.append(name)
        return parse(name, weights_mapper)

    stacked = WeightsMapper(orig_to_new_stacked={".q_proj": (".qkv_proj", "q")})

    def load(path: Path) -> Any:  # as vLLM's worker: a fresh rename mapper per load
        return lora_model.LoRAModel.from_local_checkpoint(
            str(path),
            set(TARGETS),
            peft_helper=PEFTHelper.from_local_dir(str(path), 4096),
            lora_model_id=1,
            device="cpu",
            dtype=torch.bfloat16,
            weights_mapper=stacked.get_rename_mapper(),
        )

    plain = [load(p) for p in paths]
    monkeypatch.setattr(lora_model, "parse_fine_tuned_lora_name", NameMemo(counted))
    memo = [load(paths[0])]
    first, names = len(calls), set(calls)
    assert first <= 2 * len(names), "the first load parses a name at most once with, once without the mapper"
    memo.append(load(paths[1]))
    assert len(calls) == first, "the second load parsed names again"
    for before, after in zip(plain, memo, strict=True):
        assert before.loras.keys() == after.loras.keys()
        for key, lora in before.loras.items():
            assert torch.equal(lora.lora_a, after.loras[key].lora_a)
            assert torch.equal(lora.lora_b, after.loras[key].lora_b)

    # another mapper's content is parsed anew; a mapper with renaming rules is never memoized
    name = next(iter(names))
    memoized = NameMemo(counted)
    prefixed = WeightsMapper(orig_to_new_prefix={"model.": "language_model.model."})
    assert memoized(name, prefixed) == parse(name, prefixed) != parse(name, stacked.get_rename_mapper())
    renamed = WeightsMapper(orig_to_new_renaming=[object()])  # type: ignore[list-item]
    assert memoized.content(renamed) is None
