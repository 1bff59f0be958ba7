"""Ray Serve scale-out: adapter-affine routing against Ray's default multiplexed routing and plain
round-robin, and the ingress's added latency against a single `platform serve`.

    .venv/bin/python -m loadtests.bench_ray [--requests 300] [--engine peft]

16 adapters, requests drawn power-law (Zipf s=1.1, the same sequence in every mode), 2 engine
replicas with --max-loras 4 each and, in turn, each `--cpu-slots` value as --max-cpu-loras (the
versions Ray's multiplexed LRU and our AdapterManager keep per replica: 4, the cluster holds half
the adapters; 8, the cluster can hold each adapter once but no replica can hold all of them),
concurrency 4, streaming. The modes run in one process, one after the other, on one local Ray
(2 CPUs). Ingress latency: a single server runs beside the cluster and the two are asked in turn
(one request each, base model, 1 token), so both see the same machine load; the figure is the
median of the paired differences. On a 2-core machine the replicas share the cores (and here
other processes shared them too: the load average is recorded): compare ratios, not absolute
figures. Writes results/bench_ray.json (the engine is in its figures).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from loadtests.record import write_result
from serving.experiments.stats import percentile
from testkit.adapters import make_adapters, push_adapters
from testkit.servers import free_port, serve_command, server_process, wait_ready

ADMIN = {"Authorization": "Bearer bench-admin-key-0123"}
BUSY = " (other jobs were running on the machine: more runnable processes than cores)"


def pct(seconds: list[float], q: float) -> float:
    """The q-th percentile (0-100) of `seconds`, in ms (nan when empty)."""
    value = percentile(seconds, q)
    return float("nan") if value is None else round(value * 1000, 1)


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


def one(client: httpx.Client, url: str, i: int) -> float:
    body = {"model": "base", "prompt": f"hi {i}", "max_tokens": 1, "temperature": 0}
    start = time.monotonic()
    client.post(f"{url}/v1/completions", json=body).raise_for_status()
    return time.monotonic() - start


def paired_latency(
    ray_url: str, single_url: str, n: int, block: int = 10, settle: int = 100
) -> dict[str, float]:
    """The cluster and the single server asked in turn, `block` requests each (the first of a
    block not counted): p50s and the median paired difference. Blocks, not single requests in
    turn: every request would then wake an idle server (its API process, engine core and
    worker), which on this machine measured vLLM replicas 19.5-20.5 ms slower one request in turn
    against 4.8-14.6 ms back to back. The first `settle` pairs are not counted either: a cluster
    just started still has Ray's agents and controller busy (measured: 4.5 ms added over the
    first 100 pairs, 3.0-4.3 over the next five hundred)."""
    wait_ready(ray_url, None, 120, "/ready")
    pairs: list[tuple[float, float]] = []
    with httpx.Client(timeout=120) as client:
        for b in range(-(-(n + settle) // (block - 1))):
            runs = [[one(client, url, b * block + i) for i in range(block)] for url in (ray_url, single_url)]
            pairs += zip(runs[0][1:], runs[1][1:], strict=True)
    pairs = pairs[settle:]
    return {
        "router_p50_ms": pct([r for r, _ in pairs], 50),
        "single_server_p50_ms": pct([s for _, s in pairs], 50),
        "router_added_p50_ms": pct([r - s for r, s in pairs], 50),
    }


def zipf_requests(refs: list[str], requests: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    weights = [1 / (k + 1) ** 1.1 for k in range(len(refs))]
    return rng.choices(refs, weights, k=requests)


def static_best_loads(models: list[str], slots: int) -> int:
    """Loads on warm replicas if the `slots` most requested versions never left their slots: one
    per request for another version (a bound no routing beats by much)."""
    return sum(n for _, n in Counter(models).most_common()[slots:])


def run_mode(url: str, refs: list[str], args: argparse.Namespace, routing: str, slots: int) -> dict[str, Any]:
    """`--warmup` requests (another draw of the same distribution: replicas in service have met
    most adapters), then the measured `--requests`; loads counted over the measured ones only."""

    def send(models: list[str]) -> list[float]:
        with ThreadPoolExecutor(4) as pool:
            return list(pool.map(lambda im: ttft(url, im[1], f"request {im[0]}"), enumerate(models)))

    def replicas() -> list[dict[str, Any]]:
        return list(httpx.get(f"{url}/admin/replicas", headers=ADMIN, timeout=30).json()["data"])

    send(zipf_requests(refs, args.warmup, seed=1))
    before = sum(r["adapter_loads"] for r in replicas())
    times = send(zipf_requests(refs, args.requests))
    after = replicas()
    loads = sum(r["adapter_loads"] for r in after) - before
    return {
        "routing": routing,
        "max_cpu_loras": slots,
        "requests": args.requests,
        "warmup_loads": before,
        "adapter_loads": loads,
        "loads_per_1000": round(1000 * loads / args.requests, 1),
        "ttft_p50_ms": pct(times, 50),
        "ttft_p99_ms": pct(times, 99),
        "requests_per_replica": sorted(sum(r["served"].values()) for r in after),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=100, help="requests per mode before it is measured")
    ap.add_argument("--latency-requests", type=int, default=300)
    ap.add_argument("--engine", default="peft", choices=["peft", "vllm"])
    ap.add_argument("--modes", default="affinity,ray,round-robin")
    ap.add_argument("--cpu-slots", default="4,8", help="--max-cpu-loras per replica, one pass each")
    args = ap.parse_args()

    import ray
    from ray import serve

    from registry.basemodels import resolve_base_model
    from serving.cluster.ingress import build
    from serving.settings import ServeSettings

    base = resolve_base_model("embedded/smollm2-135m-instruct-q4_1")
    root = Path(tempfile.mkdtemp(prefix="bench_ray"))
    registry = root / "registry"
    refs = push_adapters(registry, base, make_adapters(base.path, 16, 8, root / "adapters"), "ray")
    load_before = os.getloadavg()
    sport = free_port()
    single = server_process(
        serve_command(base.id, registry, sport, "--engine", args.engine),
        f"http://127.0.0.1:{sport}",
        root / "single.log",
    )
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)  # the client prints no replica logs
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    url = f"http://127.0.0.1:{port}"
    settings = ServeSettings(
        base_model=base.id, registry=str(registry), engine=args.engine, replicas=2, max_loras=4,
        max_cpu_loras=4, replica_cpus=0.5, admin_key="bench-admin-key-0123",
    )  # fmt: skip
    cpu_slots = [int(n) for n in args.cpu_slots.split(",")]
    modes, latency = [], {}
    single_url = f"http://127.0.0.1:{sport}"
    with contextlib.ExitStack() as stack:
        stack.callback(ray.shutdown)
        stack.callback(serve.shutdown)
        stack.enter_context(single)
        pport = free_port()  # what `platform serve --replicas 2` runs: the ingress app in its process
        process_cmd = serve_command(base.id, registry, pport, "--engine", args.engine, "--replicas", "2")
        process_cmd += ["--ray-address", ray.get_runtime_context().gcs_address, "--max-cpu-loras", "4"]
        with server_process(process_cmd, f"http://127.0.0.1:{pport}", root / "process.log"):
            latency = paired_latency(f"http://127.0.0.1:{pport}", single_url, args.latency_requests)
        print(latency, flush=True)
        serve.run(build(settings, "round-robin"), name="bench", route_prefix="/")
        for ref in refs:  # warm-up (files, code paths), so that the first mode is not the coldest
            ttft(url, ref, "warm-up")
        serve.delete("bench")
        for slots, routing in [(n, r) for n in cpu_slots for r in args.modes.split(",")]:
            mode_settings = settings.model_copy(update={"max_cpu_loras": slots})
            serve.run(build(mode_settings, routing), name="bench", route_prefix="/")  # type: ignore[arg-type]
            if "ray_ingress_added_p50_ms" not in latency:  # the Ingress deployment behind Ray's proxy
                two_hops = paired_latency(url, single_url, args.latency_requests)
                latency["ray_ingress_p50_ms"] = two_hops["router_p50_ms"]
                latency["ray_ingress_added_p50_ms"] = two_hops["router_added_p50_ms"]
                print(latency, flush=True)
            modes.append(run_mode(url, refs, args, routing, slots))
            print(modes[-1], flush=True)
            serve.delete("bench")
    result: dict[str, Any] = {
        "setup": f"SmolLM2-135M, {args.engine} engine, 2 replicas x max_loras 4, max_cpu_loras {args.cpu_slots} "
        f"per replica, 16 adapters Zipf 1.1, concurrency 4, {args.warmup} warm-up requests then the "
        "measured sequence, the same in every mode",
        "load": f"{os.cpu_count()} CPU cores shared by the replicas, the ingress, the proxy and the client, "
        "and with other processes: load average (1 min) {:.1f} at the start, {:.1f} at the end{}".format(
            load_before[0], os.getloadavg()[0], BUSY if load_before[0] > (os.cpu_count() or 1) else ""
        ),
        "modes": modes,
        **latency,
    }
    for slots in cpu_slots:
        by = {m["routing"]: m for m in modes if m["max_cpu_loras"] == slots}
        best = static_best_loads(zipf_requests(refs, args.requests), 2 * slots)
        result[f"loads_per_1000_static_best_{slots}"] = round(1000 * best / args.requests, 1)
        rr = by.get("round-robin")
        for name, m in by.items():
            if rr is not None and m is not rr:
                result[f"load_ratio_round_robin_over_{name}_{slots}"] = round(
                    rr["adapter_loads"] / max(1, m["adapter_loads"]), 2
                )
                result[f"ttft_p99_ratio_round_robin_over_{name}_{slots}"] = round(
                    rr["ttft_p99_ms"] / m["ttft_p99_ms"], 2
                )
    write_result("bench_ray", {"engine": args.engine, "args": vars(args), **result})
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
