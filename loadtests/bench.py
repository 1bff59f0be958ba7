"""Side-by-side benchmark: our `platform serve` vs vLLM's own OpenAI server vs a naive PEFT server.

    python loadtests/bench.py                    # embedded SmolLM2, 8 random r=16 adapters, 16 users, 30 s each
    python loadtests/bench.py --reduced          # tiny model, seconds (what CI runs)

Each server is started on 127.0.0.1 in turn, with the same base model, adapters and prompts, and
driven by the same Locust scenario (closed loop, every request streamed, fixed max_tokens) at the
same concurrency, for base-only, 1-adapter and 8-adapter traffic:
  ours - `platform serve` (vLLM AsyncLLM in-process, our CPU LoRA ops);
  vllm - `python -m vllm.entrypoints.openai.api_server --enable-lora --lora-modules ...` with vLLM's
         stock CPU LoRA ops (LORA_PLATFORM_STOCK_CPU_LORA=1);
  peft - `platform serve --engine peft`: transformers + peft generate, one request at a time.
Also measured on ours: the first request to a newly pushed version (cold: verify + load) against
the next one (warm). Writes loadtests/results/bench.json and bench.png with the machine description.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx

from loadtests.common import (
    BIN,
    ROOT,
    make_adapters,
    platform_cmd,
    push_adapters,
    read_stats,
    run_locust,
    server_process,
    summarize,
)

SCENARIOS = {"base": "base", "1 adapter": "one", "8 adapters": "uniform"}


def server_commands(
    kind: str, base: Any, registry: Path, adapters: dict[str, Path], port: int, args: argparse.Namespace
) -> tuple[list[str], dict[str, str], str]:
    common = ["--max-lora-rank", str(args.rank)]
    if kind in ("ours", "peft"):
        # ours batches every adapter in vLLM; peft is the naive one-request-at-a-time engine
        engine = ["--engine", "peft"] if kind == "peft" else ["--max-loras", str(len(adapters))]
        return (
            [
                platform_cmd(),
                "serve",
                *engine,
                "--base-model",
                args.base_model,
                "--registry",
                str(registry),
                "--port",
                str(port),
                "--max-cpu-loras",
                str(len(adapters) + 4),
                *common,
            ],
            {},
            "/ready",
        )
    modules = [f"{name}={path}" for name, path in adapters.items()]
    return (
        [
            str(BIN / "python"),
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(base.path),
            "--served-model-name",
            base.id,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--enable-lora",
            "--max-loras",
            str(len(adapters)),
            "--enforce-eager",
            "--lora-modules",
            *modules,
            *common,
        ],
        {"VLLM_CPU_KVCACHE_SPACE": "1", "LORA_PLATFORM_STOCK_CPU_LORA": "1"},
        "/v1/models",
    )


def cold_vs_warm(url: str, registry: Path) -> dict[str, float]:
    """Latency of the first request to a freshly pushed version, then of the next one."""
    from registry.store import Registry

    reg = Registry(registry)
    src = reg.get("load0@1")
    new = reg.push("coldcheck", src.path, src.lineage)
    time.sleep(0.5)
    body = {"model": new.ref, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    out = {}
    for label in ("cold_ms", "warm_ms"):
        t = time.perf_counter()
        httpx.post(url + "/v1/chat/completions", json=body, timeout=120).raise_for_status()
        out[label] = round((time.perf_counter() - t) * 1000, 1)
    return out


def run_server(
    kind: str, base: Any, registry: Path, adapters: dict[str, Path], args: argparse.Namespace, tmp: Path
) -> dict[str, Any]:
    port = args.port + {"ours": 0, "vllm": 1, "peft": 2}[kind]
    cmd, env, ready = server_commands(kind, base, registry, adapters, port, args)
    url = f"http://127.0.0.1:{port}"
    result: dict[str, Any] = {}
    with server_process(cmd, url, tmp / f"{kind}.log", env=env, ready_path=ready) as start_s:
        result["start_s"] = round(start_s, 1)
        for label, scenario in SCENARIOS.items():
            names = list(adapters)[:1] if scenario == "one" else list(adapters)
            lenv = {
                "LOADTEST_SCENARIO": scenario,
                "LOADTEST_MODELS": ",".join(names),
                "LOADTEST_BASE": base.id,
                "LOADTEST_STREAM": "1",
                "LOADTEST_CHAT": "1",
                "LOADTEST_MAX_TOKENS": str(args.max_tokens),
                "LOADTEST_SEED": "0",
            }
            prefix = Path(args.out_dir) / f"bench-{kind}-{scenario}"
            done = run_locust(url, args.users, args.duration, prefix, lenv)
            if done.returncode != 0:
                raise SystemExit(f"locust failed on {kind}/{label}:\n{done.stderr[-2000:]}")
            s = summarize(read_stats(prefix))
            s["output_tokens_per_s"] = round(s.get("output_tokens", 0) / args.duration, 2)
            result[label] = s
            print(
                f"{kind:5} {label:10} {s['output_tokens_per_s']:8.1f} tok/s {s['requests_per_s']:6.2f} req/s "
                f"TTFT p50 {s['kinds'].get('TTFT', {}).get('p50_ms', 0):7.0f} ms  E2E p50 "
                f"{s['kinds'].get('E2E', {}).get('p50_ms', 0):7.0f} ms  failures {s['failures']}",
                flush=True,
            )
        if kind == "ours":
            result["cold_vs_warm"] = cold_vs_warm(url, registry)
    return result


def ratios(results: dict[str, Any]) -> dict[str, float]:
    def tput(kind: str, label: str) -> float:
        return float(results[kind][label]["output_tokens_per_s"])

    def ttft(kind: str, label: str) -> float:
        return float(results[kind][label]["kinds"].get("TTFT", {}).get("p50_ms", 0)) or float("nan")

    out: dict[str, float] = {}
    for label in SCENARIOS:
        if "vllm" in results:
            out[f"throughput ours/vllm {label}"] = round(
                tput("ours", label) / max(tput("vllm", label), 1e-9), 3
            )
            out[f"TTFT p50 vllm/ours {label} (>1: ours faster)"] = round(
                ttft("vllm", label) / ttft("ours", label), 3
            )
        if "peft" in results:
            out[f"throughput ours/peft {label}"] = round(
                tput("ours", label) / max(tput("peft", label), 1e-9), 2
            )
    for label in list(SCENARIOS)[1:]:
        out[f"ours {label}/base"] = round(tput("ours", label) / max(tput("ours", "base"), 1e-9), 3)
    return out


def plot(results: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = list(results)
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), dpi=100)
    width = 0.8 / len(kinds)
    for i, kind in enumerate(kinds):
        xs = [j + (i - (len(kinds) - 1) / 2) * width for j in range(len(SCENARIOS))]
        axes[0].bar(xs, [results[kind][s]["output_tokens_per_s"] for s in SCENARIOS], width=width, label=kind)
        axes[1].bar(
            xs,
            [results[kind][s]["kinds"].get("TTFT", {}).get("p50_ms", 0) for s in SCENARIOS],
            width=width,
            label=kind,
        )
    for ax, title in zip(axes, ("output tokens/s", "TTFT p50 (ms)"), strict=True):
        ax.set_xticks(range(len(SCENARIOS)), list(SCENARIOS))
        ax.set_title(title)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base-model", default="embedded/smollm2-135m-instruct-q4_1")
    parser.add_argument("--adapters", type=int, default=8)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--users", type=int, default=16)
    parser.add_argument("--duration", type=int, default=30)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--servers", default="ours,vllm,peft")
    parser.add_argument("--port", type=int, default=8400)
    parser.add_argument(
        "--reduced", action="store_true", help="tiny model, 4 users, 4 s per scenario, 2 adapters"
    )
    parser.add_argument("--out-dir", default=str(ROOT / "loadtests" / "results"))
    args = parser.parse_args()
    if args.reduced:
        args.base_model, args.users, args.duration, args.adapters, args.max_tokens = "tiny", 4, 4, 2, 8
        SCENARIOS.pop("8 adapters")
        SCENARIOS["2 adapters"] = "uniform"

    import torch

    from registry.basemodels import resolve_base_model

    base = resolve_base_model(args.base_model)
    Path(args.out_dir).mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "base_model": base.id,
        "args": vars(args),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__},
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "servers": {},
    }
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        paths = make_adapters(base.path, args.adapters, args.rank, tmp)
        refs = push_adapters(tmp / "registry", base, paths)
        from registry.store import Registry

        reg = Registry(tmp / "registry")
        adapters = {ref: reg.get(ref).path for ref in refs}
        for kind in args.servers.split(","):
            report["servers"][kind] = run_server(kind, base, tmp / "registry", adapters, args, tmp)
    report["ratios"] = ratios(report["servers"])
    name = "bench-reduced" if args.reduced else "bench"
    (Path(args.out_dir) / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(report["servers"], Path(args.out_dir) / f"{name}.png")
    print(
        json.dumps(
            {
                "ratios": report["ratios"],
                "cold_vs_warm": report["servers"].get("ours", {}).get("cold_vs_warm"),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
