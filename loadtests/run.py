"""Run a short Locust scenario against a server this script starts (or --url), print p50/p90/p99.

    python -m loadtests.run                                  # embedded SmolLM2, 4 random adapters, 30 s
    python -m loadtests.run --base-model tiny --duration 10 --scenario powerlaw --adapters 6
    python -m loadtests.run --url http://127.0.0.1:8000 --scenario base      # an already running server

Scenarios: base, one, uniform, powerlaw (more adapters than max_loras, so they swap), ab (a 50/50
route over two adapters), push (uniform traffic to `load0` while a new version of it is pushed
half-way; zero failed requests are required). Outputs go to loadtests/results/<scenario>*.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from loadtests.common import read_stats, run_locust, summarize
from loadtests.record import RESULTS, write_result
from testkit.adapters import make_adapters, push_adapters
from testkit.servers import serve_command, server_process

SCENARIOS = ("base", "one", "uniform", "powerlaw", "ab", "push")


def print_table(title: str, summary: dict[str, Any]) -> None:
    print(
        f"\n{title}: {summary['requests']} requests, {summary['failures']} failed, "
        f"{summary['requests_per_s']:.2f} req/s"
    )
    print(f"{'metric':<6} {'count':>6} {'p50 ms':>9} {'p90 ms':>9} {'p99 ms':>9}")
    for kind, k in summary["kinds"].items():
        print(f"{kind:<6} {k['count']:>6} {k['p50_ms']:>9.1f} {k['p90_ms']:>9.1f} {k['p99_ms']:>9.1f}")


def scenario_env(scenario: str, refs: list[str], args: argparse.Namespace) -> dict[str, str]:
    env = {
        "LOADTEST_SCENARIO": {"push": "one"}.get(scenario, scenario),
        "LOADTEST_SEED": str(args.seed),
        "LOADTEST_MAX_TOKENS": str(args.max_tokens),
        "LOADTEST_ARRIVAL": args.arrival,
        "LOADTEST_RATE": str(args.rate),
    }
    if refs:
        env["LOADTEST_MODELS"] = ",".join(["load0"] if scenario == "push" else refs)
    if scenario == "ab":
        env["LOADTEST_ROUTE"] = "loadab"
    return env


def drive(
    url: str, scenario: str, refs: list[str], registry: Path | None, args: argparse.Namespace
) -> dict[str, Any]:
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    prefix = out_dir / scenario
    pusher = None
    if scenario == "push" and registry is not None:

        def push_later() -> None:
            from registry.store import Registry

            time.sleep(args.duration / 2)
            reg = Registry(registry)
            src = reg.get("load0@1")
            print(f"pushed {reg.push('load0', src.path, src.lineage).ref} mid-run", flush=True)

        pusher = threading.Thread(target=push_later, daemon=True)
        pusher.start()
    done = run_locust(url, args.users, args.duration, prefix, scenario_env(scenario, refs, args))
    if done.returncode != 0:
        raise SystemExit(f"locust failed ({done.returncode}):\n{done.stderr[-3000:]}")
    summary = summarize(read_stats(prefix))
    write_result(f"run_{scenario}", summary, out_dir)
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scenario", choices=SCENARIOS, default="uniform")
    parser.add_argument("--base-model", default="embedded/smollm2-135m-instruct-q4_1")
    parser.add_argument("--url", help="Use this running server instead of starting one.")
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--duration", type=int, default=30, help="Seconds of load.")
    parser.add_argument("--adapters", type=int, default=4)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--max-loras", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--arrival", choices=("closed", "poisson"), default="closed")
    parser.add_argument("--rate", type=float, default=1.0, help="Requests/s per user with --arrival poisson.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--port", type=int, default=8311)
    parser.add_argument("--out-dir", default=str(RESULTS))
    args = parser.parse_args()

    if args.url:
        summary = drive(args.url, args.scenario, [], None, args)
        print_table(args.scenario, summary)
        return 1 if summary["failures"] else 0

    from registry.basemodels import resolve_base_model
    from registry.routes import start_route

    base = resolve_base_model(args.base_model)
    with tempfile.TemporaryDirectory() as tmp:
        registry = Path(tmp) / "registry"
        refs = push_adapters(registry, base, make_adapters(base.path, args.adapters, args.rank, Path(tmp)))
        if args.scenario == "ab":
            from registry.store import Registry

            start_route(Registry(registry), "loadab", [(refs[0], 50), (refs[1 % len(refs)], 50)])
        url = f"http://127.0.0.1:{args.port}"
        cmd = serve_command(
            args.base_model, registry, args.port, "--max-loras", str(args.max_loras),
            "--max-lora-rank", str(max(16, args.rank)),
        )  # fmt: skip
        with server_process(cmd, url, Path(tmp) / "server.log", ready_path="/ready") as start_s:
            print(
                f"server ready in {start_s:.1f}s; {args.scenario} for {args.duration}s with {args.users} users"
            )
            summary = drive(url, args.scenario, refs, registry, args)
    print_table(args.scenario, summary)
    return 1 if summary["failures"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
