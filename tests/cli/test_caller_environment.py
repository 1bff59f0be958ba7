"""Tests set their own environment: odd values exported by the caller change nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]
ODD = {
    "HF_HUB_OFFLINE": "1",
    "HF_HOME": "/nonexistent/hf-home",
    "LORA_PLATFORM_REGISTRY": "/nonexistent",
    "LORA_PLATFORM_PORT": "abc",
    "LORA_PLATFORM_DTYPE": "weird",
}


def test_hub_config_and_registry_tests_pass_with_odd_caller_settings(tmp_path: Path) -> None:
    env = {**os.environ, **ODD, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/registry/test_hub.py",
            "tests/trainer/test_config.py",
            "tests/cli/test_train_cli.py",
            "-k",
            "not end_to_end",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert " passed" in out.stdout and "failed" not in out.stdout
