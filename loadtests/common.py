"""Helpers shared by the load-test runner and the benchmark: adapters, servers, Locust CSVs."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def make_adapters(
    base_path: Path, n: int, rank: int, out: Path, targets: str | list[str] = "all-linear"
) -> list[Path]:
    """n random LoRA adapters (non-zero B) for the base model, saved as peft folders."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    paths = []
    for i in range(n):
        model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
        torch.manual_seed(100 + i)
        lora = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets))
        with torch.no_grad():
            for name, p in lora.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.01)
        path = out / f"adapter{i}"
        lora.save_pretrained(path, safe_serialization=True)
        paths.append(path)
    return paths


def push_adapters(registry: Path, base: Any, paths: list[Path], prefix: str = "load") -> list[str]:
    from registry.store import Registry

    reg = Registry(registry)
    lineage = {
        "base_model": base.id,
        "base_model_sha256": base.weights_sha256,
        "source": "loadtests (random weights)",
    }
    return [reg.push(f"{prefix}{i}", p, lineage).ref for i, p in enumerate(paths)]


def wait_ready(
    url: str, proc: subprocess.Popen[bytes] | None, timeout_s: float, path: str = "/v1/models"
) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url + path, timeout=2).status_code == 200:
                return time.monotonic() - start
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"server at {url} not ready after {timeout_s}s")


@contextmanager
def server_process(
    cmd: list[str],
    url: str,
    log: Path,
    env: dict[str, str] | None = None,
    timeout_s: float = 300,
    ready_path: str = "/v1/models",
) -> Iterator[float]:
    """Start a server command, wait for it, yield its start-up seconds, stop it."""
    with log.open("wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    try:
        try:
            started = wait_ready(url, proc, timeout_s, ready_path)
        except RuntimeError as exc:
            raise RuntimeError(
                f"{exc}; {' '.join(cmd[:4])} ... log tail:\n{log.read_text()[-3000:]}"
            ) from None
        yield started
    finally:
        stop_process(proc)


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM (the server drains), then SIGKILL if it is still there a minute later."""
    proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)


def platform_cmd() -> str:
    return shutil.which("platform", path=str(BIN)) or "platform"


def serve_command(base_model: str, registry: Path | str, port: int, *extra: str) -> list[str]:
    """`platform serve` on a base model, a registry and a loopback port, plus `extra` flags."""
    return [
        platform_cmd(),
        "serve",
        "--base-model",
        base_model,
        "--registry",
        str(registry),
        "--port",
        str(port),
        *extra,
    ]


def run_locust(
    url: str, users: int, seconds: int, prefix: Path, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    cmd = [
        str(BIN / "locust"),
        "-f",
        str(ROOT / "loadtests" / "locustfile.py"),
        "--host",
        url,
        "--headless",
        "-u",
        str(users),
        "-r",
        str(users),
        "-t",
        f"{seconds}s",
        "--csv",
        str(prefix),
        "--html",
        f"{prefix}.html",
        "--only-summary",
        "--stop-timeout",
        "30",
        "--exit-code-on-error",
        "0",
    ]
    return subprocess.run(
        cmd, env={**os.environ, **env}, capture_output=True, text=True, timeout=seconds + 120
    )


def read_stats(prefix: Path) -> list[dict[str, str]]:
    with open(f"{prefix}_stats.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def read_trace(path: Path) -> list[dict[str, Any]]:
    """The LOADTEST_TRACE lines of a Locust run (none if it wrote no file)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def tokens_in_window(requests: list[dict[str, Any]], seconds: float) -> float:
    """Output tokens streamed inside the first `seconds` after the first request started.

    A streamed request's first token counts at its `first` time and the rest evenly over
    (`first`, `end`]; a request with no first-token time counts all its tokens at `end`. So the
    tokens a server streams after the window (Locust lets running requests finish) are not credited
    to it: dividing every token of the requests started in the window by the window overstates the
    throughput of a server whose requests take a large part of the window."""
    if not requests:
        return 0.0
    t0 = min(r["start"] for r in requests)
    stop = t0 + seconds
    total = 0.0
    for r in requests:
        tokens, first, end = r["tokens"], r["first"], r["end"]
        if tokens <= 0:
            continue
        if first is None or tokens == 1 or end <= first:
            total += tokens if end <= stop else 0
            continue
        if first <= stop:  # the first token, then the share of the rest streamed before `stop`
            total += 1 + (tokens - 1) * min((stop - first) / (end - first), 1.0)
    return total


def summarize(rows: list[dict[str, str]]) -> dict[str, Any]:
    """Requests, failures, throughput and E2E/TTFT/TPOT percentiles from a Locust stats CSV."""
    out: dict[str, Any] = {"kinds": {}}
    http = [r for r in rows if r["Type"] in ("POST", "GET") and r["Name"] != "/v1/models"]
    out["requests"] = sum(int(r["Request Count"]) for r in http)
    out["failures"] = sum(int(r["Failure Count"]) for r in http)
    out["requests_per_s"] = round(sum(float(r["Requests/s"]) for r in http), 3)
    for kind in ("E2E", "TTFT", "TPOT"):
        row = next((r for r in rows if r["Type"] == kind and r["Name"] == "all"), None)
        if row is None:
            continue
        n = int(row["Request Count"])
        out["kinds"][kind] = {
            "count": n,
            "p50_ms": float(row["50%"] or 0),
            "p90_ms": float(row["90%"] or 0),
            "p99_ms": float(row["99%"] or 0),
        }
        if kind == "E2E":
            out["output_tokens"] = int(float(row["Average Content Size"]) * n)
    cold = [r for r in rows if r["Type"] == "E2E" and r["Name"].endswith("(cold)")]
    if cold:
        out["cold_e2e_ms"] = max(float(r["Max Response Time"]) for r in cold)
    return out
