"""Render the docs' performance tables from `loadtests/results/*.json`.

    python -m loadtests.report            # rewrite the generated blocks of docs/performance.md
    python -m loadtests.report --check    # exit 1 if the page and the result files disagree

The page keeps its prose; each `<!-- results: NAME -->` ... `<!-- /results -->` block is replaced by
the tables of `loadtests/results/NAME.json`, headed by where the figures came from (command, commit,
date, CPU). A figure in the docs is never typed by hand: tests/loadtests/test_report.py runs the check.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from loadtests.record import RESULTS, ROOT, cpu_label, read_result

PAGE = ROOT / "docs" / "performance.md"
BLOCK = re.compile(r"(<!-- results: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /results -->)", re.S)


def table(header: Iterable[str], rows: Iterable[Iterable[Any]]) -> str:
    head = list(header)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if abs(value) >= 1000:
            return f"{value:.0f}"
        return f"{value:.3f}".rstrip("0").rstrip(".") if abs(value) < 10 else f"{value:.1f}"
    if isinstance(value, list):
        return ", ".join(fmt(v) for v in value)
    return str(value)


def kind(scenario: dict[str, Any], name: str, q: str) -> Any:
    return scenario.get("kinds", {}).get(name, {}).get(f"{q}_ms")


def servers(f: dict[str, Any]) -> str:
    """bench.py: every server and scenario, then the ratios it computed."""
    rows = []
    for server, scenarios in f["servers"].items():
        for label, s in scenarios.items():
            if isinstance(s, dict) and "output_tokens_per_s" in s:
                rows.append(
                    [
                        server,
                        label,
                        s["output_tokens_per_s"],
                        kind(s, "TTFT", "p50"),
                        kind(s, "TTFT", "p99"),
                        kind(s, "TPOT", "p50"),
                        s.get("requests"),
                        s.get("failures"),
                        s.get("loads_per_1000_requests"),
                    ]
                )
    header = ["server", "scenario", "output tok/s", "TTFT p50 ms", "TTFT p99 ms", "TPOT p50 ms"]
    main = table([*header, "requests", "failed", "loads / 1000 req"], rows)
    cold = f["servers"].get("ours", {}).get("cold_vs_warm")
    extra = ""
    if cold:
        extra = "\n\nFirst request to a newly pushed version (ours), p50 over the pushes: " + ", ".join(
            f"{k.removesuffix('_ms').replace('_', ' ')} {fmt(v)} ms" for k, v in cold.items()
        )
    return main + extra + "\n\n" + ratios(f["ratios"])


def ratios(values: dict[str, Any]) -> str:
    return table(["ratio", "value"], values.items())


def lora(f: dict[str, Any]) -> str:
    """bench_lora.py: engine configurations x scenarios (medians over rounds)."""
    scenarios = ["base", "one_adapter", "n_adapters_mixed", "base_plus_n_mixed"]
    rows = [
        [label, *[c.get(s, {}).get("tokens_per_s") for s in scenarios]] for label, c in f["configs"].items()
    ]
    return table(["engine", *[f"{s} tok/s" for s in scenarios]], rows) + "\n\n" + ratios(f["ratios"])


def lora_ops(f: dict[str, Any]) -> str:
    """bench_lora_kernel.py: microseconds per decoder layer's LoRA, by batch, dtype and variant."""
    names = ["torch", "avx2", "avx512", "amx"]
    rows = [
        [batch, dtype, *[us.get(n) for n in names]]
        for batch, by_dtype in f["batches"].items()
        for dtype, us in by_dtype.items()
    ]
    head = f"{f['torch_threads']} thread(s), {f['clock']}, rank {f['args']['rank']}; microseconds per decoder layer"
    return (
        head
        + f" (x {f['decoder_layers']} for a SmolLM2 step)\n\n"
        + table(["batch", "dtype", *[f"{n} us" for n in names]], rows)
        + "\n\n"
        + ratios(f["speedup_over_torch"])
    )


def ray(f: dict[str, Any]) -> str:
    """bench_ray.py: adapter loads and TTFT per routing mode, and the router's added latency."""
    rows = [
        [
            m["routing"],
            m["max_cpu_loras"],
            m["loads_per_1000"],
            m["warmup_loads"],
            m["ttft_p50_ms"],
            m["ttft_p99_ms"],
        ]
        for m in f["modes"]
    ]
    header = ["routing", "--max-cpu-loras", "loads / 1000 req", "warm-up loads", "TTFT p50 ms", "TTFT p99 ms"]
    rest = {k: v for k, v in f.items() if k not in ("modes", "setup", "load", "args", "engine")}
    return (
        f"{f['setup']}.\n\n" + table(header, rows) + "\n\n" + ratios(rest) + f"\n\nMachine load: {f['load']}."
    )


def registry(f: dict[str, Any]) -> str:
    """bench_registry.py: propagation to replicas, and what PostgreSQL costs per resolution."""
    rows = [
        [what.replace("_", " "), replica, m["p50_ms"], m["p90_ms"], m["max_ms"], m["n"]]
        for what, by in f["propagation"].items()
        for replica, m in by.items()
    ]
    rows += [
        [what.replace("_", " "), backend, m["p50_ms"], m["p90_ms"], m["max_ms"], m["n"]]
        for what in ("resolve_cache_miss", "request_latency_cached_reference")
        for backend, m in f[what].items()
    ]
    added = f"\n\nAdded per request by PostgreSQL (p50): {fmt(f['added_per_request_p50_ms'])} ms."
    return table(["figure", "where", "p50 ms", "p90 ms", "max ms", "n"], rows) + added


def load_stall(f: dict[str, Any]) -> str:
    """bench_load_stall.py: running streams grouped by what happened during their decode."""
    rows = [
        [
            group,
            g["streams"],
            g["TTFT"].get("p50_ms"),
            g["TPOT"].get("p50_ms"),
            g["TPOT"].get("p99_ms"),
            g["max_gap"].get("p99_ms"),
        ]
        for group, g in f["groups"].items()
    ]
    a = f["adapter"]
    head = f"Loaded version: rank {a['rank']} {a['targets']} {a['dtype']}, {a['safetensors_bytes'] / 1e6:.0f} MB.\n\n"
    header = ["streams", "n", "TTFT p50 ms", "TPOT p50 ms", "TPOT p99 ms", "longest gap p99 ms"]
    return head + table(header, rows) + "\n\n" + ratios(f["ratios"])


def preference(f: dict[str, Any]) -> str:
    """bench_preference.py: the preferred property's rate and the task's exact match, base/SFT/DPO."""

    def ci(v: list[float]) -> str:
        return f"{v[0]:.3f} [{v[1]:.3f}, {v[2]:.3f}]"

    rows = [
        [label, m["ref"], ci(m["polite_rate"]), ci(m["first_line_exact_match"])]
        for label, m in f["models"].items()
    ]
    d = f["dpo_minus_sft"]
    rows.append(["DPO - SFT", "paired", ci(d["polite_rate"]), ci(d["first_line_exact_match"])])
    s = f["settings"]
    head = (
        f"{f['held_out']} held-out prompts of `sample:support-prefs`, greedy; SFT {s['sft_steps']} steps, "
        f"DPO {s['dpo_steps']} steps at lr {s['dpo_lr']:g}, beta {s['beta']:g}, rpo_alpha {s.get('rpo_alpha', 0):g}; "
        "95% bootstrap intervals.\n\n"
    )
    return head + table(["model", "version", "polite closing rate", "first-line exact match"], rows)


def forgetting(f: dict[str, Any]) -> str:
    """bench_forgetting.py: task exact match / ROUGE-L and general-set accuracy, unmixed vs mixed adapter."""

    def ci(v: list[float] | None) -> str:
        return "-" if v is None else f"{v[0]:+.3f} [{v[1]:+.3f}, {v[2]:+.3f}]"

    t, g, v, s = f["task"], f["general"], f["verdict"], f["settings"]
    rows = []
    for label, m in t["models"].items():
        gm = g["models"].get(label, {})
        em, general = m.get("vs_unmixed_exact_match"), gm.get("general")
        rows.append([label, m["ref"], m["exact_match"], m["rougeL"], ci(em), general, ci(gm.get("drop"))])
    mix = ", ".join(f"`{x['path']}` {x['sampled']}" for x in f["mix"])
    head = (
        f"{t['rows']} held-out rows of `sample:support-tickets`, {g['items']} general-set items, greedy; "
        f"each adapter {s['steps']} steps, seed {s['seed']}; the mixed run's training rows: {mix}; "
        "95% paired bootstrap intervals.\n\n"
    )
    header = ["model", "version", "exact match", "ROUGE-L", "EM - unmixed", "general", "general drop vs base"]
    target = "met" if v["target_met"] else "not met"
    tail = (
        f"\n\nGeneral-set drop, mixed / unmixed: {fmt(v['drop_ratio'])}; target (at most half, exact match "
        f"at most 0.02 below the unmixed adapter's): {target}."
    )
    if not v["unmixed_forgot"]:
        tail += " The unmixed adapter's drop is within noise (its interval includes 0)."
    return head + table(header, rows) + tail


def structured(f: dict[str, Any]) -> str:
    """bench_structured.py: schema-valid share with and without the constraint, and its decode-rate cost."""
    v, t = f["validity"], f["throughput"]
    rows = [
        [arm, f"{v[arm]['valid']}/{v[arm]['of']}", fmt(t[arm]["median_decode_tok_s"]), t[arm]["requests"]]
        for arm in ("unconstrained", "constrained")
    ]
    head = f"Adapter {f['ref']} on `{f['base_model']}`, max_tokens {f['max_tokens']}.\n\n"
    ratio = t["ratio_constrained_over_unconstrained"]
    return (
        head
        + table(["arm", "schema-valid", "median decode tok/s", "requests"], rows)
        + f"\n\nConstrained / unconstrained decode rate in the same mixed batches: {fmt(ratio)}."
    )


def train(f: dict[str, Any]) -> str:
    """bench_train.py: training tokens/s, peak RSS and validation loss, ours vs TRL vs a plain loop."""
    s = f["settings"]
    rounds = s.get("rounds", 1)
    rows = [
        [data, who, fmt(m["tokens_per_second"]), fmt(m["peak_rss_mb"]), fmt(m["val_loss"]), m["steps"]]
        + ([", ".join(fmt(v) for v in m.get("rounds_tokens_per_second", []))] if rounds > 1 else [])
        for data, by in f["results"].items()
        for who, m in by.items()
    ]
    ratio_rows = [
        [
            data,
            fmt(r.get("tokens_per_second_vs_plain", "-")),
            fmt(r.get("tokens_per_second_vs_trl", "-")),
            f"{r['val_loss_vs_trl_pct']:+.2f}%" if "val_loss_vs_trl_pct" in r else "-",
            r.get("targets_met", "-"),
        ]
        for data, r in f["ratios"].items()
    ]
    pooled = f"; {rounds} rounds in alternating order, tokens/s pooled" if rounds > 1 else ""
    bf16 = any(":bf16" in who for by in f["results"].values() for who in by)
    precision = (
        "; `:bf16`: ours' CPU bf16 (the frozen base's matmuls), TRL's and the plain loop's bf16 autocast"
        if bf16
        else ""
    )
    head = (
        f"`{s['base_model']}`, {s['dtype']} weights, LoRA r{s['rank']} on {s['targets']}, sequence "
        f"{s['seq_len']}, global batch {s['batch']}, lr {s['lr']:g}, {s['steps']} steps; ours with "
        f"{s['ours'] or 'its defaults'}{pooled}{precision}.\n\n"
    )
    columns = ["data", "trainer", "tokens/s", "peak RSS MB", "val loss", "steps"]
    return (
        head
        + table(columns + (["tokens/s per round"] if rounds > 1 else []), rows)
        + "\n\n"
        + table(
            [
                "data",
                f"ours / {'fastest ' if bf16 else ''}plain (>= 1.3)",
                f"ours / {'fastest ' if bf16 else ''}TRL (>= 1.0)",
                f"val loss vs TRL{' (its lowest)' if bf16 else ''} (within 2%)",
                "targets met",
            ],
            ratio_rows,
        )
    )


def dataprep(f: dict[str, Any]) -> str:
    """bench_dataprep.py: preparing a large JSONL, streaming (now) against reading it all (before)."""
    load = ", ".join(fmt(x) for x in f["load_average"])
    head = (
        f"{f['rows']} rows ({fmt(f['file_mib'])} MiB of JSONL), prepared as `platform train` does before "
        f"tokenizing: validate, clean, dedup, split, leakage, personal data, near-duplicates at Jaccard "
        f"{fmt(f['threshold'])}. Load average at the end {load} on a shared machine"
        + ("; both sides ran at the same time" if f.get("side_by_side") else "")
        + ".\n\n"
    )
    rows = []
    for label, m in (("streaming (now)", f["after"]), (f"all in memory ({f['before_ref']})", f["before"])):
        if not m:
            continue
        splits = m.get("splits") or {}
        rows.append(
            [
                label,
                fmt(m["peak_rss_mb"]),
                fmt(m["wall_s"]),
                fmt(m.get("rows_per_s")),
                fmt(m.get("duplicates_dropped")),
                " / ".join(str(splits[k]) for k in ("train", "val", "test")) if splits else "-",
                fmt(m.get("near_duplicate_pairs")),
                m.get("stopped", "finished"),
            ]
        )
    header = ["code", "peak RSS MB", "wall s", "rows/s", "duplicates dropped", "train / val / test"]
    out = head + table([*header, "near-dup pairs", "run"], rows)
    sample = f["after"].get("near_duplicate_sample")
    if sample:
        out += (
            f"\n\nNear-duplicates (now) on an even sample: {sample['train'][0]} of {sample['train'][1]} training rows, "
            f"{sample['heldout'][0]} of {sample['heldout'][1]} held-out rows (`data.near_duplicate_max_rows`)."
        )
    return out


def training_layouts(f: dict[str, Any]) -> str:
    """bench_ddp.py / bench_ray_train.py: training tokens/s of one process x N threads against N
    processes (torchrun) or N Ray Train workers of one thread each."""

    def layout(r: dict[str, Any]) -> str:
        threads = f"{r['threads_per_process']} thread" + ("s" if r["threads_per_process"] != 1 else "")
        if "ray_workers" in r:
            return f"{r['ray_workers']} Ray workers x {threads}"
        return f"{r['processes']} process" + ("es" if r["processes"] != 1 else "") + f" x {threads}"

    rows = [
        [
            layout(r),
            r["batch_per_process"],
            r["tokens_per_second"],
            r["train_seconds"],
            r["command_seconds"],
            r["final_train_loss"],
        ]
        for r in f["runs"]
    ]
    [ratio] = [k for k in f if k.endswith("_over_threads")]
    head = f"`{f['base_model']}`, {f['steps']} steps, global batch {f['global_batch']}, sequence {f['seq_len']}.\n\n"
    return (
        head
        + table(["layout", "batch per process", "tokens/s", "train s", "command s", "final loss"], rows)
        + f"\n\nSecond layout / one process (tokens/s): {fmt(f[ratio])} ({f['note']})."
    )


RENDER: dict[str, Callable[[dict[str, Any]], str]] = {
    "bench": servers,
    "bench_llamacpp": servers,
    "bench_many": servers,
    "bench_lora": lora,
    "bench_lora_avx2": lora_ops,
    "bench_ray": ray,
    "bench_ddp": training_layouts,
    "bench_ray_train": training_layouts,
    "bench_registry": registry,
    "bench_load_stall": load_stall,
    "bench_preference": preference,
    "bench_preference_plain_dpo": preference,
    "bench_structured": structured,
    "bench_forgetting": forgetting,
    "bench_train": train,
    "bench_train_rounds": train,
    "bench_train_bf16": train,
    "bench_train_bf16_wide": train,
    "bench_dataprep": dataprep,
}


def provenance(r: dict[str, Any]) -> str:
    """Where the figures came from, in two lines above the tables."""
    packages = ", ".join(f"{k} {v}" for k, v in r["packages"].items()) or "package versions not recorded"
    return (
        f"Command: `{r['command']}`  \nCommit {r['commit']}; {r['date']}; {cpu_label(r['machine'])}; "
        f"{packages}; file `loadtests/results/{r['benchmark']}.json`."
    )


def render(name: str, results: Path = RESULTS) -> str:
    r = read_result(results / f"{name}.json")
    return provenance(r) + "\n\n" + RENDER[name](r["figures"]) + "\n"


def rendered_page(text: str, results: Path = RESULTS) -> str:
    """`text` with every results block re-rendered from the files."""
    return BLOCK.sub(lambda m: m.group(1) + render(m.group("name"), results) + m.group(4), text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 where the page and the files disagree")
    args = parser.parse_args()
    text = PAGE.read_text()
    new = rendered_page(text)
    if args.check:
        if new != text:
            print(f"{PAGE} is out of date: run python -m loadtests.report", file=sys.stderr)
            return 1
        return 0
    PAGE.write_text(new)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
