"""Soak: 500 push-and-serve cycles of new versions; resident memory stays flat, nothing leaks on disk."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import httpx
import psutil
import pytest

from registry.store import Registry
from tests.serving.fixtures import Server, metric

CYCLES = 500


def rss_mb(pid: int) -> float:
    proc = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)]) / 2**20


@pytest.mark.slow
def test_500_push_and_serve_cycles_keep_memory_and_disk_flat(
    server: Server, adapters, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    registry, _ = adapters
    reg = Registry(registry)
    src = reg.get("contact@1")
    samples: list[tuple[int, float]] = []
    staging_before = set(
        (registry / ".staging").iterdir()
    )  # a writer killed by another test may have left one
    disk_start = sum(f.stat().st_size for f in (registry / "versions").rglob("*") if f.is_file())
    soak_requests = 'lora_requests_total{model="soak@'
    requests_start = metric(server.url, soak_requests)
    tokens_start = metric(server.url, 'lora_tokens_total{kind="completion",model="soak@')
    loaded: list[float] = []
    start = time.monotonic()
    with httpx.Client(base_url=server.url, timeout=60) as client:
        for i in range(CYCLES):
            v = reg.push("soak", src.path, src.lineage)
            r = client.post(
                "/v1/chat/completions",
                json={
                    "model": v.ref,
                    "messages": [{"role": "user", "content": "hi"}],
                    "max_tokens": 2,
                    "temperature": 0,  # greedy: sampled, the tiny model ends at its first token now and then
                },
            )
            assert r.status_code == 200 and r.json()["model"] == v.ref, r.text
            if i:
                reg.remove(
                    f"soak@{v.version - 1}"
                )  # the registry keeps one soak version; the server evicts LRU
            if i in (50, CYCLES - 1):
                samples.append((i, rss_mb(server.proc.pid)))
            if i % 50 == 0:
                loaded.append(metric(server.url, "lora_loaded_adapters"))
    seconds = time.monotonic() - start
    disk_end = sum(f.stat().st_size for f in (registry / "versions").rglob("*") if f.is_file())
    growth = samples[-1][1] - samples[0][1]
    report = {
        "cycles": CYCLES,
        "seconds": round(seconds, 1),
        "rss_mb_at_50": round(samples[0][1], 1),
        "rss_mb_at_end": round(samples[-1][1], 1),
        "rss_growth_mb": round(growth, 1),
        "disk_growth_bytes": disk_end - disk_start,
    }
    out = os.environ.get("LORA_PLATFORM_SOAK_REPORT")
    if out:
        Path(out).write_text(json.dumps(report, indent=2) + "\n")
    print(report)
    assert growth < 150, report  # flat: well under the size of the engine's own adapter slots
    assert disk_end - disk_start < 5 * (src.path / "adapter_model.safetensors").stat().st_size
    assert set((registry / ".staging").iterdir()) <= staging_before
    # every cycle's request is counted under its own version, with its 2 tokens
    assert metric(server.url, soak_requests) - requests_start == CYCLES
    assert metric(server.url, 'lora_tokens_total{kind="completion",model="soak@') - tokens_start == 2 * CYCLES
    assert metric(server.url, soak_requests + '1",') == 1  # the first version served once
    # and the engine's adapters stay within --max-cpu-loras (4) while 500 versions pass through
    assert loaded and max(loaded) <= 4, loaded
