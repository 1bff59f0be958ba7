"""Locust helpers shared by the load-test runner and the benchmarks: run it, read its CSVs and traces.

Servers and random adapters come from `testkit` (shared with `tests/`)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
from pathlib import Path
from typing import Any

from testkit.servers import BIN, ROOT


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
