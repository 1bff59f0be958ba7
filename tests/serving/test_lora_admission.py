"""Slot-aware admission (serving/engine/lora_admission.py): a request whose adapter needs a slot
gets the first one that drains, instead of waiting behind later requests for the running adapters."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.serving.fixtures import random_adapter

TARGETS = ["q_proj", "v_proj"]


def test_a_request_waiting_for_a_slot_gets_the_first_one_that_drains(tmp_path: Path, tiny_base: Any) -> None:
    adapters = [str(random_adapter(tmp_path / name, 4, TARGETS)) for name in "xyz"]
    proc = subprocess.run(
        [sys.executable, "-m", "tests.serving.lora_admission_engine", str(tiny_base.path), "ours", *adapters],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    out = json.loads(lines[-1].removeprefix("RESULT "))
    first, finished = out["first"], out["finished"]
    # x and y hold both slots; z came before more requests for x and y. x ends sooner, so
    # its new requests wait and z takes x's slot the step after x1 ends (vLLM's own scheduler
    # ran x2 and x3 at once and gave z a slot only when all of x's or y's requests had ended)
    assert first["z1"] == finished["x1"] + 1, out
    assert first["y2"] < first["z1"], "requests for the other running adapter are admitted as before"
    assert first["x2"] == first["x3"] > finished["z1"], "x's later requests run once z has a slot"
    assert out["tokens"] == {"x1": 6, "y1": 16, "z1": 2, "x2": 16, "x3": 16, "y2": 16}, out
