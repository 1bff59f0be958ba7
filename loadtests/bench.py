"""Side-by-side benchmark: our `platform serve` vs vLLM's own OpenAI server vs a naive PEFT server
vs llama.cpp's `llama-server`.

    python -m loadtests.bench                    # embedded SmolLM2, 8 random r=16 adapters, 16 users, 30 s each
    python -m loadtests.bench --servers ours,vllm,peft,llamacpp --many 64   # + llama.cpp, + 64 adapters
    python -m loadtests.bench --reduced          # tiny model, seconds (what CI runs)

Each server is started on 127.0.0.1 in turn, with the same base model, adapters and prompts, and
driven by the same Locust scenario (closed loop, every request streamed, fixed max_tokens) at the
same concurrency, for base-only, 1-adapter and 8-adapter traffic. Throughput counts the output
tokens streamed inside each scenario's window (Locust's per-request trace: a request's tokens
spread from its first token to its end); the tokens of the last requests, which Locust lets finish
after the window, are not credited. `output_tokens_per_s_started_in_window`, the figure before
session 12, credited them, the more the longer a server's requests take, and missed the requests
that end in the last second of Locust's CSV: against the new figure, -4% to +1% for ours, up to
+31% for vLLM's server on adapters (docs/design-notes.md).
  ours - `platform serve` (vLLM AsyncLLM in-process, our CPU LoRA ops);
  vllm - `python -m vllm.entrypoints.openai.api_server --enable-lora --lora-modules ...` with vLLM's
         stock CPU LoRA ops (LORA_PLATFORM_STOCK_CPU_LORA=1);
  peft - `platform serve --engine peft`: transformers + peft generate, one request at a time;
  llamacpp - `llama-server` built once into the cache (loadtests/llamacpp.py), the same bf16 base and
         adapters converted with llama.cpp's own converters, one slot per user, per-request `lora`
         scales, `cache_prompt: false`, a fresh server per scenario; connection resets counted.
With --many N (ours and vllm only): N adapters with power-law popularity, --max-loras 8,
--max-cpu-loras 16 (ours loads the rest from the registry on demand; vLLM gets all N as
--lora-modules), measured after --many-warmup seconds (default 30) of the same traffic, as a
server in service has met its adapters; our loads and evictions per 1000 requests come from /metrics.
With --rounds R (and --many): ours' many-adapter scenario and its mixed one are measured in R
alternating windows (ABBA order) on two servers that both stay up, and vLLM's many-adapter one in R
windows, each pooled: the mean throughput, TTFT/TPOT percentiles over every request of every window
(from the traces), so a drift of the machine's speed over minutes lands on both sides of a ratio.
Also measured on ours: the first request to a newly pushed version (cold: verify + load) against
the next one (warm), over --pushes pushes to a name in use (loaded ahead). Writes loadtests/results/bench.json (bench_llamacpp.json with llamacpp, bench_many.json with --many)
and its .png through loadtests.record (the command, commit, machine and package versions).
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from loadtests import llamacpp
from loadtests.common import read_stats, read_trace, run_locust, summarize, tokens_in_window
from loadtests.record import write_result
from serving.engine.cpu.lora_kernel import cpu_dtype
from serving.experiments.stats import percentile
from testkit.adapters import make_adapters, push_adapters
from testkit.servers import BIN, ROOT, platform_cmd, server_process

SCENARIOS = {"base": "base", "1 adapter": "one", "8 adapters": "uniform"}
PORTS = {"ours": 0, "vllm": 1, "peft": 2, "llamacpp": 3}
MANY_MAX_LORAS, MANY_MAX_CPU_LORAS = 8, 16
MANY_PORT = 10
"""offset of the port of ours' many-adapter server while ours' main server is up (--rounds)"""


def server_commands(
    kind: str,
    base: Any,
    registry: Path,
    adapters: dict[str, Path],
    port: int,
    args: argparse.Namespace,
    slots: tuple[int, int] | None = None,
) -> tuple[list[str], dict[str, str], str]:
    """Command, environment and readiness path of server `kind`; `slots`: (max_loras, max_cpu_loras)."""
    max_loras, max_cpu_loras = slots or (len(adapters), len(adapters) + 4)
    common = ["--max-lora-rank", str(args.rank), "--max-cpu-loras", str(max_cpu_loras)]
    if kind in ("ours", "peft"):
        # ours batches every adapter in vLLM; peft is the naive one-request-at-a-time engine
        engine = ["--engine", "peft"] if kind == "peft" else ["--max-loras", str(max_loras)]
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
            str(max_loras),
            "--enforce-eager",
            # the dtype ours runs with --dtype auto (float32 on CPUs without bf16 instructions,
            # where vLLM's own default, the model's bf16, is emulated)
            "--dtype",
            cpu_dtype("auto"),
            "--lora-modules",
            *modules,
            *common,
        ],
        {"VLLM_CPU_KVCACHE_SPACE": "1", "LORA_PLATFORM_STOCK_CPU_LORA": "1"},
        "/v1/models",
    )


def metric(url: str, name: str) -> float:
    """Sum of the /metrics samples of `name` (every label set)."""
    text = httpx.get(url + "/metrics", timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith((name + "{", name + " "))
    )


def cold_vs_warm(url: str, registry: Path, pushes: int) -> dict[str, float]:
    """First request to a freshly pushed version of a name in use (the server loads it ahead once
    it sees the push), then the next one; p50 over `pushes` pushes."""
    from registry.store import Registry

    reg = Registry(registry)
    src = reg.get("load0@1")
    reg.push("coldcheck", src.path, src.lineage)
    body = {"model": "coldcheck", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}

    def timed() -> float:
        t = time.perf_counter()
        httpx.post(url + "/v1/chat/completions", json=body, timeout=120).raise_for_status()
        return (time.perf_counter() - t) * 1000

    timed()  # the name is in use from here on
    cold, warm = [], []
    for _ in range(pushes):
        ahead = metric(url, "lora_adapter_loads_total")
        reg.push("coldcheck", src.path, src.lineage)
        deadline = time.monotonic() + 10
        while metric(url, "lora_adapter_loads_total") == ahead and time.monotonic() < deadline:
            time.sleep(0.05)
        cold.append(timed())
        warm.append(timed())
    c, w = statistics.median(cold), statistics.median(warm)
    return {"cold_ms": round(c, 1), "warm_ms": round(w, 1), "cold_minus_warm_ms": round(c - w, 1)}


def locust_env(scenario: str, names: list[str], base: Any, args: argparse.Namespace) -> dict[str, str]:
    return {
        "LOADTEST_SCENARIO": scenario,
        "LOADTEST_MODELS": ",".join(names),
        "LOADTEST_BASE": base.id,
        "LOADTEST_STREAM": "1",
        "LOADTEST_CHAT": "1",
        "LOADTEST_MAX_TOKENS": str(args.max_tokens),
        "LOADTEST_SEED": "0",
    }


def connection_resets(prefix: Path) -> int:
    """Requests that failed with a reset or dropped connection (Locust's failures CSV)."""
    path = Path(f"{prefix}_failures.csv")
    if not path.exists():
        return 0
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    # status 0: Locust got no response at all (the connection dropped before one)
    words = ("ConnectionReset", "RemoteDisconnected", "Connection aborted", "ConnectionError", "'0: ")
    return sum(int(r["Occurrences"]) for r in rows if any(w in r["Error"] for w in words))


def trace_path(args: argparse.Namespace, kind: str, scenario: str, tag: str = "") -> Path:
    """Where `measure` has Locust write the per-request trace of a window."""
    return Path(args.out_dir) / f"bench-{kind}-{scenario}{tag}_trace.jsonl"


def many_label(many: dict[str, Path]) -> str:
    return f"many {len(many)} adapters"


def measure(
    kind: str,
    url: str,
    label: str,
    scenario: str,
    names: list[str],
    base: Any,
    args: argparse.Namespace,
    extra_env: dict[str, str] | None = None,
    tag: str = "",
) -> dict[str, Any]:
    """One Locust run of `scenario` (requests for `names`) against the server at `url`; its CSVs
    and trace are named by kind, scenario and `tag`."""
    prefix = Path(args.out_dir) / f"bench-{kind}-{scenario}{tag}"
    trace = trace_path(args, kind, scenario, tag)
    trace.unlink(missing_ok=True)
    env = {**locust_env(scenario, names, base, args), "LOADTEST_TRACE": str(trace), **(extra_env or {})}
    done = run_locust(url, args.users, args.duration, prefix, env)
    if done.returncode != 0:
        raise SystemExit(f"locust failed on {kind}/{label}:\n{done.stderr[-2000:]}")
    s = summarize(read_stats(prefix))
    s["kinds"] = trace_kinds(read_trace(trace))  # percentiles as every benchmark takes them
    # tokens streamed inside the window; the tokens of every request started in it, including
    # those streamed while Locust lets the last requests finish, over the window: the earlier figure
    s["output_tokens_per_s"] = round(tokens_in_window(read_trace(trace), args.duration) / args.duration, 2)
    s["output_tokens_per_s_started_in_window"] = round(s.get("output_tokens", 0) / args.duration, 2)
    s["connection_resets"] = connection_resets(prefix)
    print(
        f"{kind:8} {label:11} {s['output_tokens_per_s']:8.1f} tok/s {s['requests_per_s']:6.2f} req/s "
        f"TTFT p50 {s['kinds'].get('TTFT', {}).get('p50_ms', 0):7.0f} ms  TPOT p50 "
        f"{s['kinds'].get('TPOT', {}).get('p50_ms', 0):5.0f} ms  failures {s['failures']} "
        f"(resets {s['connection_resets']})",
        flush=True,
    )
    return s


def scenario_models(scenario: str, adapters: dict[str, Path], base: Any) -> list[str]:
    return [base.id] if scenario == "base" else list(adapters)[:1] if scenario == "one" else list(adapters)


def run_server(
    kind: str,
    base: Any,
    registry: Path,
    adapters: dict[str, Path],
    args: argparse.Namespace,
    tmp: Path,
    many: dict[str, Path] | None = None,
) -> dict[str, Any]:
    """Every scenario on a fresh server of `kind`; for ours with `many` and --rounds > 1, also the
    many-adapter rounds while this server is still up."""
    if kind == "llamacpp":
        return run_llamacpp(base, adapters, args, tmp)
    port = args.port + PORTS[kind]
    cmd, env, ready = server_commands(kind, base, registry, adapters, port, args)
    url = f"http://127.0.0.1:{port}"
    result: dict[str, Any] = {}
    with server_process(cmd, url, tmp / f"{kind}.log", env=env, ready_path=ready) as start_s:
        result["start_s"] = round(start_s, 1)
        for label, scenario in SCENARIOS.items():
            names = scenario_models(scenario, adapters, base)
            result[label] = measure(kind, url, label, scenario, names, base, args)
        if kind == "ours" and args.pushes:
            result["cold_vs_warm"] = cold_vs_warm(url, registry, args.pushes)
        if kind == "ours" and many and args.rounds > 1:
            result.update(run_rounds(url, base, registry, adapters, many, args, tmp))
    return result


def run_llamacpp(base: Any, adapters: dict[str, Path], args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """llama-server, the same weights converted to GGUF, a fresh server per scenario."""
    binary = llamacpp.build_server(jobs=args.build_jobs)
    out = tmp / "gguf"
    out.mkdir(exist_ok=True)
    gguf_base = llamacpp.convert_base(base.path, out)
    loras = {
        n: llamacpp.convert_adapter(p, base.path, out / f"lora{i}.gguf")
        for i, (n, p) in enumerate(adapters.items())
    }
    url = f"http://127.0.0.1:{args.port + PORTS['llamacpp']}"
    result: dict[str, Any] = {}
    port = args.port + PORTS["llamacpp"]
    cmd = llamacpp.server_command(binary, gguf_base, list(loras.values()), port, args.users)
    scales = {"LOADTEST_LLAMACPP_LORAS": ",".join(loras)}  # adapters in --lora order
    for label, scenario in SCENARIOS.items():
        names = scenario_models(scenario, adapters, base)
        with server_process(cmd, url, tmp / f"llamacpp-{scenario}.log", ready_path="/health"):
            result[label] = measure("llamacpp", url, label, scenario, names, base, args, scales)
    return result


@contextmanager
def many_server(
    kind: str,
    base: Any,
    registry: Path,
    many: dict[str, Path],
    args: argparse.Namespace,
    tmp: Path,
    port: int,
) -> Iterator[str]:
    """A server of `kind` for N adapters (8 in a batch, 16 in CPU memory; ours loads the rest from
    the registry on demand), warmed up with --many-warmup seconds of the same traffic (a server in
    service has met most adapters); yields its URL."""
    cmd, env, ready = server_commands(
        kind, base, registry, many, port, args, (MANY_MAX_LORAS, MANY_MAX_CPU_LORAS)
    )
    url = f"http://127.0.0.1:{port}"
    with server_process(cmd, url, tmp / f"{kind}-many.log", env=env, ready_path=ready):
        if args.many_warmup:
            warm = argparse.Namespace(**{**vars(args), "duration": args.many_warmup})
            measure(kind, url, "warm-up", "powerlaw", list(many), base, warm)
        yield url


def measure_many(
    kind: str, url: str, base: Any, many: dict[str, Path], args: argparse.Namespace, tag: str = ""
) -> dict[str, Any]:
    """The power-law scenario over N adapters; for ours, its loads and evictions (/metrics)."""
    label = many_label(many)
    names = ("lora_adapter_loads_total", "lora_adapter_evictions_total")
    before = {m: metric(url, m) for m in names} if kind == "ours" else {}
    s = measure(kind, url, label, "powerlaw", list(many), base, args, tag=tag)
    if kind == "ours" and s["requests"]:
        for m, v in before.items():
            key = m.removeprefix("lora_adapter_").removesuffix("_total")
            s[key] = metric(url, m) - v
            s[f"{key}_per_1000_requests"] = round(s[key] * 1000 / s["requests"], 1)
        print(
            f"ours     {label}: loads/evictions per 1000 requests {s.get('loads_per_1000_requests')}/{s.get('evictions_per_1000_requests')}"
        )
    return s


def run_many(
    kind: str, base: Any, registry: Path, many: dict[str, Path], args: argparse.Namespace, tmp: Path
) -> dict[str, Any]:
    """N adapters, power-law popularity: one window, or --rounds windows pooled."""
    label = many_label(many)
    with many_server(kind, base, registry, many, args, tmp, args.port + PORTS[kind]) as url:
        if args.rounds <= 1:
            return {label: measure_many(kind, url, base, many, args)}
        runs = [measure_many(kind, url, base, many, args, tag=f"-round{i}") for i in range(args.rounds)]
    traces = [read_trace(trace_path(args, kind, "powerlaw", f"-round{i}")) for i in range(args.rounds)]
    return {label: {**pooled(runs, traces), "each": runs}}


def percentiles(values: list[float]) -> dict[str, Any]:
    """p50/p90/p99 (ms) of `values`, interpolated as the A/B statistics do."""
    if not values:
        return {"count": 0}
    return {
        "count": len(values),
        **{f"p{q}_ms": round(percentile(values, q) or 0.0, 1) for q in (50, 90, 99)},
    }


def trace_kinds(requests: list[dict[str, Any]]) -> dict[str, Any]:
    """E2E, TTFT and TPOT percentiles (ms) of the requests of per-request traces, with the one
    percentile function (not Locust's own)."""
    ended = [r for r in requests if r.get("end") is not None]
    e2e = [(r["end"] - r["start"]) * 1000 for r in ended]
    ttft = [(r["first"] - r["start"]) * 1000 for r in requests if r["first"] is not None]
    tpot = [
        (r["end"] - r["first"]) * 1000 / (r["tokens"] - 1)
        for r in ended
        if r["first"] is not None and r["tokens"] > 1
    ]
    return {"E2E": percentiles(e2e), "TTFT": percentiles(ttft), "TPOT": percentiles(tpot)}


def pooled(rounds: list[dict[str, Any]], traces: list[list[dict[str, Any]]]) -> dict[str, Any]:
    """One scenario over several rounds: mean throughput, TTFT and TPOT percentiles of every
    request of every round (from the traces), loads and evictions over all requests."""
    requests = [r for t in traces for r in t]
    each = [s["output_tokens_per_s"] for s in rounds]
    out: dict[str, Any] = {
        "rounds": len(rounds),
        "output_tokens_per_s": round(statistics.mean(each), 2),
        "output_tokens_per_s_each": each,
        "output_tokens_per_s_started_in_window": round(
            statistics.mean(s["output_tokens_per_s_started_in_window"] for s in rounds), 2
        ),
        "requests": sum(s["requests"] for s in rounds),
        "failures": sum(s["failures"] for s in rounds),
        "kinds": trace_kinds(requests),
    }
    for key in ("loads", "evictions"):
        if all(key in s for s in rounds) and out["requests"]:
            out[f"{key}_per_1000_requests"] = round(sum(s[key] for s in rounds) * 1000 / out["requests"], 1)
    return out


def run_rounds(
    url: str,
    base: Any,
    registry: Path,
    adapters: dict[str, Path],
    many: dict[str, Path],
    args: argparse.Namespace,
    tmp: Path,
) -> dict[str, Any]:
    """The many-adapter scenario against the mixed one, in --rounds alternating windows (ABBA
    order) on two servers that stay up: ours for `adapters` at `url` and ours for `many`, so a
    drift of the machine's speed over minutes lands on both sides of the ratio. Returns the many
    scenario pooled over the rounds, and under "rounds" the mixed one pooled and every round."""
    mixed = list(SCENARIOS)[-1]
    label = many_label(many)
    runs: dict[str, list[dict[str, Any]]] = {mixed: [], label: []}
    traces: dict[str, list[list[dict[str, Any]]]] = {mixed: [], label: []}
    with many_server("ours", base, registry, many, args, tmp, args.port + MANY_PORT) as many_url:
        window = {
            mixed: lambda tag: measure("ours", url, mixed, "uniform", list(adapters), base, args, tag=tag),
            label: lambda tag: measure_many("ours", many_url, base, many, args, tag=tag),
        }
        scenario = {mixed: "uniform", label: "powerlaw"}
        for i in range(args.rounds):
            for which in (mixed, label) if i % 2 == 0 else (label, mixed):
                runs[which].append(window[which](f"-round{i}"))
                traces[which].append(read_trace(trace_path(args, "ours", scenario[which], f"-round{i}")))
            print(
                f"round {i}: {label}/{mixed} throughput "
                f"{runs[label][-1]['output_tokens_per_s'] / max(runs[mixed][-1]['output_tokens_per_s'], 1e-9):.3f}",
                flush=True,
            )
    return {
        label: pooled(runs[label], traces[label]),
        "rounds": {
            mixed: pooled(runs[mixed], traces[mixed]),
            "each": [{mixed: a, label: b} for a, b in zip(runs[mixed], runs[label], strict=True)],
        },
    }


def ratios(results: dict[str, Any]) -> dict[str, Any]:
    def tput(kind: str, label: str) -> float:
        return float(results[kind][label]["output_tokens_per_s"])

    def ttft(kind: str, label: str) -> float:
        return float(results[kind][label]["kinds"].get("TTFT", {}).get("p50_ms", 0)) or float("nan")

    def tpot(kind: str, label: str) -> float:
        return float(results[kind][label]["kinds"].get("TPOT", {}).get("p50_ms", 0)) or float("nan")

    out: dict[str, Any] = {}
    if "ours" not in results:
        return out
    for label in SCENARIOS:
        if "vllm" in results:
            out[f"throughput ours/vllm {label}"] = round(
                tput("ours", label) / max(tput("vllm", label), 1e-9), 3
            )
            out[f"TTFT p50 vllm/ours {label} (>1: ours faster)"] = round(
                ttft("vllm", label) / ttft("ours", label), 3
            )
        if "llamacpp" in results:
            out[f"throughput ours/llamacpp {label}"] = round(
                tput("ours", label) / max(tput("llamacpp", label), 1e-9), 3
            )
            out[f"TPOT p50 llamacpp/ours {label} (>1: ours faster)"] = round(
                tpot("llamacpp", label) / tpot("ours", label), 3
            )
        if "peft" in results:
            out[f"throughput ours/peft {label}"] = round(
                tput("ours", label) / max(tput("peft", label), 1e-9), 2
            )
    for label in list(SCENARIOS)[1:]:
        out[f"ours {label}/base"] = round(tput("ours", label) / max(tput("ours", "base"), 1e-9), 3)
    many = [k for k in results.get("ours", {}) if k.startswith("many ")]
    mixed = list(SCENARIOS)[-1]
    rounds = results.get("ours", {}).get("rounds")
    for label in many:
        # with --rounds: both sides pooled over the same alternating rounds
        side = {label: results["ours"][label], mixed: rounds[mixed] if rounds else results["ours"][mixed]}
        out[f"ours {label}/{mixed} throughput"] = round(
            side[label]["output_tokens_per_s"] / max(side[mixed]["output_tokens_per_s"], 1e-9), 3
        )
        p99 = {k: s["kinds"].get("TTFT", {}).get("p99_ms", 0) for k, s in side.items()}
        out[f"ours {label}/{mixed} TTFT p99"] = round(p99[label] / max(p99[mixed], 1e-9), 3)
        if rounds:
            out[f"ours {label}/{mixed} throughput, each round"] = [
                round(r[label]["output_tokens_per_s"] / max(r[mixed]["output_tokens_per_s"], 1e-9), 3)
                for r in rounds["each"]
            ]
        if label in results.get("vllm", {}):
            out[f"throughput ours/vllm {label}"] = round(
                tput("ours", label) / max(tput("vllm", label), 1e-9), 3
            )
            started = [
                results[k][label].get("output_tokens_per_s_started_in_window") for k in ("ours", "vllm")
            ]
            if all(started):
                out[f"throughput ours/vllm {label}, tokens of requests started in the window"] = round(
                    started[0] / max(started[1], 1e-9), 3
                )
    return out


def plot(results: dict[str, Any], out: Path) -> None:
    """Throughput and TTFT p50 per scenario and server; with --many, a third panel: the mixed and
    many-adapter throughput of each server that ran both (pooled where measured in rounds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = list(results)
    mixed = list(SCENARIOS)[-1]
    many = next((k for r in results.values() for k in r if k.startswith("many ")), None)
    fig, axes = plt.subplots(1, 3 if many else 2, figsize=(16 if many else 11, 3.8), dpi=100)
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
    for ax, title in zip(axes, ("output tokens/s", "TTFT p50 (ms)"), strict=False):
        ax.set_xticks(range(len(SCENARIOS)), list(SCENARIOS))
        ax.set_title(title)
        ax.legend()
    if many:
        both = [k for k in kinds if many in results[k]]
        for i, kind in enumerate(both):
            side = results[kind].get("rounds", results[kind])  # ours: its mixed scenario pooled too
            xs = [j + (i - (len(both) - 1) / 2) * (0.8 / len(both)) for j in range(2)]
            figures = [side[mixed]["output_tokens_per_s"], results[kind][many]["output_tokens_per_s"]]
            axes[2].bar(xs, figures, width=0.8 / len(both), label=kind)
        rounds = results.get("ours", {}).get(many, {}).get("rounds")
        axes[2].set_xticks(range(2), [mixed, many])
        axes[2].set_title("output tokens/s" + (f" (pooled: mean of {rounds} windows)" if rounds else ""))
        axes[2].legend()
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def result_name(args: argparse.Namespace) -> str:
    """One result file per benchmark: the server comparison, + llama.cpp, or many adapters."""
    if args.reduced:
        return "bench_reduced"
    if args.many:
        return "bench_many"
    return "bench_llamacpp" if "llamacpp" in args.servers.split(",") else "bench"


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
    parser.add_argument(
        "--many", type=int, default=0, help="also N adapters, power-law popularity (ours, vllm); 0: skip"
    )
    parser.add_argument(
        "--many-warmup", type=int, default=30, help="seconds of the same traffic before --many is measured"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="with --many: measure ours' many-adapter and mixed scenarios in this many alternating rounds, both servers up, "
        "and vLLM's many-adapter one in as many windows; each pooled (an even number balances the ABBA order)",
    )
    parser.add_argument("--pushes", type=int, default=20, help="pushes measured for cold vs warm (ours)")
    parser.add_argument("--build-jobs", type=int, default=2, help="compilers for the llama.cpp build")
    args = parser.parse_args()
    if args.rounds < 1 or (args.rounds > 1 and not args.many):
        parser.error("--rounds: a whole number >= 1, and above 1 only with --many")
    if args.reduced:
        args.base_model, args.users, args.duration, args.adapters, args.max_tokens = "tiny", 4, 4, 2, 8
        args.pushes = min(args.pushes, 3)
    SCENARIOS.pop("8 adapters")
    SCENARIOS[f"{args.adapters} adapters"] = "uniform"

    from registry.basemodels import resolve_base_model

    base = resolve_base_model(args.base_model)
    Path(args.out_dir).mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "base_model": base.id,
        "args": vars(args),
        "servers": {},
    }
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        paths = make_adapters(base.path, args.adapters, args.rank, tmp)
        refs = push_adapters(tmp / "registry", base, paths)
        from registry.store import Registry

        reg = Registry(tmp / "registry")
        adapters = {ref: reg.get(ref).path for ref in refs}
        many: dict[str, Path] = {}
        if args.many:
            paths = make_adapters(base.path, args.many, args.rank, tmp / "many")
            many = {ref: reg.get(ref).path for ref in push_adapters(tmp / "registry", base, paths, "many")}
        for kind in args.servers.split(","):
            result = run_server(kind, base, tmp / "registry", adapters, args, tmp, many)
            if many and kind in ("ours", "vllm") and "rounds" not in result:
                result.update(run_many(kind, base, tmp / "registry", many, args, tmp))
            report["servers"][kind] = result
    report["ratios"] = ratios(report["servers"])
    write_result(result_name(args), report, args.out_dir)
    name = result_name(args)
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
