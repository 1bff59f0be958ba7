"""Ray Serve scale-out: multiplexed (adapter-affine) routing against plain round-robin, and the
router's added latency against a single `platform serve`.

    PYTHONPATH=$PWD .venv/bin/python -m loadtests.bench_ray [--requests 300] [--engine peft]

16 adapters, requests drawn power-law (Zipf s=1.1), 2 engine replicas with --max-cpu-loras 4 each
(the slots Ray's multiplexed LRU and our AdapterManager keep), concurrency 4, streaming. Both modes
run in one process, one after the other, on one local Ray (2 CPUs). On a 2-core machine the two
replicas share the cores: compare the ratios, not absolute figures. Writes results/bench_ray.json.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from loadtests.common import make_adapters, platform_cmd, push_adapters, server_process

RESULTS = Path(__file__).parent / "results" / "bench_ray.json"
ADMIN = {"Authorization": "Bearer bench"}


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(q * len(xs)))] * 1000, 1) if xs else float("nan")


def ttft(url: str, model: str, prompt: str, tokens: int = 8) -> float:
    body = {"model": model, "prompt": prompt, "max_tokens": tokens, "temperature": 0, "stream": True}
    start = time.monotonic()
    first = None
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=300) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if first is None and line.startswith("data: {") and '"text":""' not in line:
                first = time.monotonic() - start
    return first if first is not None else time.monotonic() - start


def latency(url: str, n: int) -> list[float]:
    out = []
    for i in range(n):
        body = {"model": "base", "prompt": f"hi {i}", "max_tokens": 1, "temperature": 0}
        start = time.monotonic()
        httpx.post(f"{url}/v1/completions", json=body, timeout=120).raise_for_status()
        out.append(time.monotonic() - start)
    return out


def run_mode(url: str, refs: list[str], requests: int, multiplex: bool) -> dict[str, Any]:
    rng = random.Random(0)
    weights = [1 / (k + 1) ** 1.1 for k in range(len(refs))]
    models = rng.choices(refs, weights, k=requests)
    with ThreadPoolExecutor(4) as pool:
        times = list(pool.map(lambda im: ttft(url, im[1], f"request {im[0]}"), enumerate(models)))
    replicas = httpx.get(f"{url}/admin/replicas", headers=ADMIN, timeout=30).json()["data"]
    loads = sum(r["adapter_loads"] for r in replicas)
    return {
        "routing": "multiplexed" if multiplex else "round-robin",
        "requests": requests,
        "adapter_loads": loads,
        "loads_per_1000": round(1000 * loads / requests, 1),
        "ttft_p50_ms": pct(times, 0.5),
        "ttft_p99_ms": pct(times, 0.99),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--engine", default="peft", choices=["peft", "vllm"])
    args = ap.parse_args()

    import ray
    from ray import serve

    from registry.basemodels import resolve_base_model
    from serving.cluster.router import build
    from serving.settings import ServeSettings
    from tests.serving.fixtures import free_port

    base = resolve_base_model("embedded/smollm2-135m-instruct-q4_1")
    root = Path(tempfile.mkdtemp(prefix="bench_ray"))
    registry = root / "registry"
    refs = push_adapters(registry, base, make_adapters(base.path, 16, 8, root / "adapters"), "ray")
    ray.init(num_cpus=2, include_dashboard=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    url = f"http://127.0.0.1:{port}"
    settings = ServeSettings(
        base_model=base.id, registry=str(registry), engine=args.engine, replicas=2, max_loras=4,
        max_cpu_loras=4, replica_cpus=0.5, admin_key="bench",
    )  # fmt: skip
    modes, router_lat = [], []
    for multiplex in (True, False):
        serve.run(build(settings, multiplex), name="bench", route_prefix="/")
        latency(url, 5)  # warm-up
        if multiplex:
            router_lat = latency(url, 50)
        modes.append(run_mode(url, refs, args.requests, multiplex))
        print(modes[-1], flush=True)
        serve.delete("bench")
    serve.shutdown()
    ray.shutdown()
    sport = free_port()
    cmd = [
        platform_cmd(),
        "serve",
        "--base-model",
        base.id,
        "--registry",
        str(registry),
        "--port",
        str(sport),
    ]
    with server_process([*cmd, "--engine", args.engine], f"http://127.0.0.1:{sport}", root / "single.log"):
        latency(f"http://127.0.0.1:{sport}", 5)
        single_lat = latency(f"http://127.0.0.1:{sport}", 50)
    mux, rr = modes
    result = {
        "setup": f"SmolLM2-135M, {args.engine} engine, 2 replicas x max_cpu_loras 4, 16 adapters Zipf 1.1, "
        "concurrency 4, 2 shared CPU cores",
        "modes": modes,
        "load_ratio_round_robin_over_multiplexed": round(
            rr["adapter_loads"] / max(1, mux["adapter_loads"]), 2
        ),
        "ttft_p99_ratio_round_robin_over_multiplexed": round(rr["ttft_p99_ms"] / mux["ttft_p99_ms"], 2),
        "router_p50_ms": pct(router_lat, 0.5),
        "single_server_p50_ms": pct(single_lat, 0.5),
        "router_added_p50_ms": round(pct(router_lat, 0.5) - pct(single_lat, 0.5), 1),
    }
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
