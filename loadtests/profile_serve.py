"""Where a decode step's time goes: py-spy on `platform serve` and its engine processes under load.

    python -m loadtests.profile_serve                       # SmolLM2, base traffic, 16 users
    python -m loadtests.profile_serve --adapters 1          # one adapter
    python -m loadtests.profile_serve --adapters 64 --many  # 64, power-law popularity, 8 slots (bench.py --many)

Starts the server, drives it with the Locust scenario of bench.py (streamed chat, 32 tokens), and
after a warm-up records every process of the server (API process, engine core, CPU worker) with
`py-spy record --subprocesses` (raw folded stacks in --out). Prints, per process, its share of
one core and the functions with the most samples (self and inclusive).
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import tempfile
import threading
from pathlib import Path

from loadtests.common import read_stats, run_locust, summarize
from testkit.adapters import make_adapters, push_adapters
from testkit.servers import BIN, platform_cmd, server_process


def summarize_stacks(raw: Path, seconds: float, rate: int, top: int = 12) -> None:
    """Per process: share of one core, top self and inclusive frames."""
    per: dict[str, tuple[collections.Counter[str], collections.Counter[str]]] = {}
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        # py-spy roots a child's stacks at "process <pid>:<cmdline>" under its parent's
        at = max(i for i, f in enumerate(frames) if f.startswith("process ") or i == 0)
        proc, frames = frames[at], frames[at + 1 :] or ["(no frame)"]
        own, incl = per.setdefault(proc, (collections.Counter(), collections.Counter()))
        own[frames[-1]] += int(count)
        for frame in set(frames):
            incl[frame] += int(count)
    for proc, (own, incl) in per.items():
        total = sum(own.values())
        print(f"== {proc[:100]}: {total / (seconds * rate):.0%} of one core")
        for title, counts in (("self", own), ("inclusive", incl)):
            print(f"  top {title}:")
            for frame, n in counts.most_common(top):
                print(f"    {n / total:6.1%}  {frame[:140]}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base-model", default="embedded/smollm2-135m-instruct-q4_1")
    parser.add_argument("--adapters", type=int, default=0, help="0: base traffic; 1: one adapter")
    parser.add_argument(
        "--many", action="store_true", help="power-law popularity over --adapters, 8 slots, 16 in CPU memory"
    )
    parser.add_argument("--users", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--rate", type=int, default=50, help="py-spy samples per second")
    parser.add_argument("--port", type=int, default=8490)
    parser.add_argument("--out", default=str(Path(tempfile.gettempdir()) / "profile_serve"))
    args = parser.parse_args()
    from registry.basemodels import resolve_base_model

    base = resolve_base_model(args.base_model)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    url = f"http://127.0.0.1:{args.port}"
    refs = (
        push_adapters(out / "registry", base, make_adapters(base.path, args.adapters, 16, out))
        if args.adapters
        else []
    )
    cmd = [platform_cmd(), "serve", "--base-model", args.base_model, "--registry", str(out / "registry")]
    if args.many:
        cmd += ["--max-loras", "8", "--max-cpu-loras", "16", "--max-lora-rank", "16"]
    cmd += ["--port", str(args.port)]  # last: found by pgrep below
    env = {
        "LOADTEST_SCENARIO": "powerlaw" if args.many else "one" if refs else "base",
        "LOADTEST_MODELS": ",".join(refs),
        "LOADTEST_BASE": base.id,
        "LOADTEST_STREAM": "1",
        "LOADTEST_CHAT": "1",
        "LOADTEST_MAX_TOKENS": "32",
    }
    with server_process(cmd, url, out / "server.log", ready_path="/ready"):
        pid = subprocess.run(
            ["pgrep", "-f", f"port {args.port}$"], capture_output=True, text=True
        ).stdout.split()[0]
        load = threading.Thread(
            target=run_locust, args=(url, args.users, args.warmup + args.seconds + 5, out / "load", env)
        )
        load.start()
        threading.Event().wait(args.warmup)
        spy = [str(BIN / "py-spy"), "record", "--subprocesses", "--nonblocking", "-f", "raw"]
        spy += ["-r", str(args.rate), "-d", str(args.seconds), "-o", str(out / "stacks.txt"), "--pid", pid]
        subprocess.run(spy, check=True, capture_output=True)
        load.join()
    s = summarize(read_stats(out / "load"))
    print(f"{s['requests_per_s']} req/s, TPOT p50 {s['kinds'].get('TPOT', {}).get('p50_ms')} ms")
    summarize_stacks(out / "stacks.txt", args.seconds, args.rate)


if __name__ == "__main__":
    main()
