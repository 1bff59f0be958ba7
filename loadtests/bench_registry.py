"""Shared registry figures: how fast a change reaches every replica, and what PostgreSQL costs.

    python -m loadtests.bench_registry                 # 20 pushes, 2 replicas, tiny model
    python -m loadtests.bench_registry --pushes 5      # quicker

Starts a real PostgreSQL (the `pgserver` wheel, 127.0.0.1), two `platform serve` replicas on it
(`--engine peft`, tiny model: the figures are about the catalog, not the engine) and, for the
comparison, one replica on a SQLite folder registry. Then:
  propagation  - for each push: the new version is pushed and `prod` moved to it by this process
                 (a third one); every replica is asked for `name:prod` until it answers with the
                 new version. Time from the alias move's commit to that answer, p50 and max, per
                 replica. Also the time to the first answer of `name` (latest), which a replica
                 resolves at once on a miss (read-your-writes).
  resolution   - a reference's first resolution (cache miss: one catalog query) in-process, and
                 requests for a resolved reference (cache hit, the hot path) on the SQLite and the
                 PostgreSQL replica, interleaved: the added latency per request.
Writes loadtests/results/bench_registry.json and prints a summary.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

from loadtests.record import RESULTS, write_result
from serving.experiments.stats import percentile
from testkit.adapters import random_adapter
from testkit.postgres import Postgres
from testkit.servers import free_port, platform_cmd, server_process


def pct(values: list[float], q: float) -> float:
    return percentile(values, q) or 0.0


def ms(values: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(1000 * pct(values, 50), 2),
        "p90_ms": round(1000 * pct(values, 90), 2),
        "max_ms": round(1000 * max(values), 2),
        "n": len(values),
    }


def ask(client: httpx.Client, url: str, model: str) -> httpx.Response:
    body = {"model": model, "prompt": "hi", "max_tokens": 1, "temperature": 0}
    return client.post(f"{url}/v1/completions", json=body)


def wait_for(client: httpx.Client, url: str, model: str, want: str, limit_s: float = 30) -> float:
    start = time.monotonic()
    while time.monotonic() - start < limit_s:
        r = ask(client, url, model)
        if r.status_code == 200 and r.json()["model"] == want:
            return time.monotonic() - start
        time.sleep(0.01)
    raise RuntimeError(f"{url}: {model} never answered {want} within {limit_s}s")


def serve(location: str, port: int, extra: list[str]) -> list[str]:
    return [
        platform_cmd(),
        "serve",
        "--base-model",
        "tiny",
        "--engine",
        "peft",
        "--dtype",
        "float32",
        "--registry",
        location,
        "--port",
        str(port),
        *extra,
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pushes", type=int, default=20)
    parser.add_argument("--requests", type=int, default=200, help="hot-path requests per backend")
    parser.add_argument("--out-dir", default=str(RESULTS))
    args = parser.parse_args()

    from registry.basemodels import resolve_base_model
    from registry.store import Registry

    tmp = Path(tempfile.mkdtemp(prefix="bench-registry-"))
    base = resolve_base_model("tiny")
    lineage = {"base_model": base.id, "base_model_sha256": base.weights_sha256, "source": "bench_registry"}
    adapters = [random_adapter(tmp / f"a{r}", r, ["q_proj", "v_proj"]) for r in (4, 8)]
    pg = Postgres()
    results: dict[str, Any] = {"pushes": args.pushes}
    try:
        url, artifacts = pg.new_database(), tmp / "artifacts"
        shared = Registry(url, artifacts)
        local = Registry(tmp / "folder-registry")
        for reg in (shared, local):
            reg.push("bench", adapters[0], lineage)
            reg.set_alias("bench@1", "prod")
        with ExitStack() as stack, httpx.Client(timeout=60) as client:
            replicas = []
            for i in range(2):
                port = free_port()
                cmd = serve(url, port, ["--artifacts", str(artifacts)])
                stack.enter_context(
                    server_process(cmd, f"http://127.0.0.1:{port}", tmp / f"r{i}.log", ready_path="/ready")
                )
                replicas.append(f"http://127.0.0.1:{port}")
            port = free_port()
            sqlite_url = f"http://127.0.0.1:{port}"
            stack.enter_context(
                server_process(
                    serve(str(tmp / "folder-registry"), port, []),
                    sqlite_url,
                    tmp / "s.log",
                    ready_path="/ready",
                )
            )
            for u in replicas:
                wait_for(client, u, "bench:prod", "bench@1")

            alias_s: dict[str, list[float]] = {u: [] for u in replicas}
            latest_s: dict[str, list[float]] = {u: [] for u in replicas}
            for i in range(args.pushes):
                v = shared.push("bench", adapters[i % 2], lineage)
                pushed = time.monotonic()
                for u in replicas:  # replicas are asked one after the other: add the wait so far
                    waited = time.monotonic() - pushed
                    latest_s[u].append(waited + wait_for(client, u, "bench", v.ref))
                shared.set_alias(v.ref, "prod")
                moved = time.monotonic()
                for u in replicas:
                    waited = time.monotonic() - moved
                    alias_s[u].append(waited + wait_for(client, u, "bench:prod", v.ref))
            results["propagation"] = {
                "alias_move_to_first_answer": {f"replica{i}": ms(alias_s[u]) for i, u in enumerate(replicas)},
                "push_to_first_answer_latest": {
                    f"replica{i}": ms(latest_s[u]) for i, u in enumerate(replicas)
                },
            }

            for reg, label in ((local, "sqlite"), (shared, "postgresql")):
                samples = []
                for _ in range(200):
                    t0 = time.perf_counter()
                    reg.resolve("bench:prod")
                    samples.append(time.perf_counter() - t0)
                results.setdefault("resolve_cache_miss", {})[label] = ms(samples)
            hot: dict[str, list[float]] = {"sqlite": [], "postgresql": []}
            for u in (sqlite_url, replicas[0]):
                ask(client, u, "bench@1")  # resolved and loaded: the hot path from here on
            for _ in range(args.requests):
                for u, label in ((sqlite_url, "sqlite"), (replicas[0], "postgresql")):
                    t0 = time.perf_counter()
                    assert ask(client, u, "bench@1").status_code == 200
                    hot[label].append(time.perf_counter() - t0)
            results["request_latency_cached_reference"] = {k: ms(v) for k, v in hot.items()}
            results["added_per_request_p50_ms"] = round(
                1000 * (pct(hot["postgresql"], 50) - pct(hot["sqlite"], 50)), 2
            )
    finally:
        pg.close()
    write_result("bench_registry", results, args.out_dir)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
