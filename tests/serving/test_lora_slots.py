"""vLLM's adapter slots (serving/engine/lora_slots.py): loading an adapter takes no slot, and a step
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
