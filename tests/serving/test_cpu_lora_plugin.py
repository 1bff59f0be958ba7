"""The vLLM plugin (serving/engine/cpu/cpu_lora.py) patches every vLLM process of the environment: it
says so in one log line, and LORA_PLATFORM_STOCK_CPU_LORA=1 leaves vLLM untouched, as does a vLLM
version outside the tested range."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
PROBE = """
import json, logging, os
logging.basicConfig(level=logging.INFO)
import vllm
vllm.__version__ = os.environ.get("PROBE_VLLM_VERSION", vllm.__version__)  # as an upgrade would read
from vllm.plugins import load_general_plugins
from vllm.lora.punica_wrapper import punica_cpu
load_general_plugins()  # what every vLLM process does, a user's own `vllm serve` included
print("RESULT " + json.dumps(getattr(punica_cpu.PunicaWrapperCPU, "_lora_platform", False)))
"""


def probe(stock: str | None, version: str | None = None) -> tuple[bool, str]:
    env = {k: v for k, v in os.environ.items() if k != "LORA_PLATFORM_STOCK_CPU_LORA"}
    if version is not None:
        env["PROBE_VLLM_VERSION"] = version
    env.update({"PYTHONPATH": str(ROOT), "VLLM_LOGGING_LEVEL": "INFO", "LORA_PLATFORM_NO_FUSED_LORA": "1"})
    if stock is not None:
        env["LORA_PLATFORM_STOCK_CPU_LORA"] = stock
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=300)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    return json.loads(lines[-1].removeprefix("RESULT ")), proc.stdout + proc.stderr


@pytest.mark.parametrize("stock", [None, "0"])
def test_the_plugin_patches_vllm_and_says_how_to_switch_it_off(stock: str | None) -> None:
    patched, logs = probe(stock)
    assert patched
    said = [line for line in logs.splitlines() if "lora-platform plugin active" in line]
    assert len(said) == 1, logs[-3000:]
    assert "LORA_PLATFORM_STOCK_CPU_LORA=1" in said[0]


def test_lora_platform_stock_cpu_lora_leaves_vllm_untouched() -> None:
    patched, logs = probe("1")
    assert not patched
    assert "lora-platform plugin active" not in logs


def test_the_tested_vllm_range_is_pinned_and_holds_the_installed_vllm() -> None:
    from serving.engine import cpu

    assert cpu.TESTED_VLLM == ">=0.32.0,<0.33"  # widen only after the tests ran on the new version
    assert cpu.vllm_tested()  # the vLLM installed here is patched (the tests above)
    assert cpu.vllm_tested("0.32.0+cpu")
    assert not cpu.vllm_tested("0.33.0") and not cpu.vllm_tested("0.31.2") and not cpu.vllm_tested("dev")


def test_an_untested_vllm_version_is_left_stock_with_one_log_line() -> None:
    patched, logs = probe(None, version="0.33.0")
    assert not patched
    assert "lora-platform plugin active" not in logs
    said = [line for line in logs.splitlines() if "lora-platform CPU patches off" in line]
    assert len(said) == 1, logs[-3000:]
    assert "0.33.0" in said[0] and ">=0.32.0,<0.33" in said[0]
