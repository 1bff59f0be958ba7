"""Data preparation of a large JSONL: peak RSS, wall time and rows/s, streaming (now) against in-memory (before).

Generates a support-ticket-like prompt/completion JSONL (prompts of 1 to ~40 sentences, 3% exact
duplicates, 3% near duplicates that differ by an order number, 5% with an e-mail address), then
prepares it the way `platform train` does before tokenizing: `trainer.data.prepare` (validate,
clean, dedup, split, leakage) and `trainer.hygiene.check` (personal data, near-duplicates at
Jaccard 0.8). Each side runs in its own process, so its peak RSS (`wait4`) is its own; the two run
side by side (at the same time) to halve the wait on a shared machine:

- after: this checkout's code (streams to an Arrow file per split; near-duplicates on a sample);
- before: the code of `--before` (default: the last commit that loaded every row into memory),
  exported with `git archive` into a temporary folder; stopped when its RSS passes `--before-limit-gb`
  or its time `--before-timeout-s` (the result then says where it was stopped).

    nice -n 10 python -m loadtests.bench_dataprep --rows 1000000
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BEFORE = "8942a35"
"""The last commit whose data preparation read every row into memory (main before streaming)."""
THRESHOLD = 0.8

_PRODUCTS = [
    "backpack",
    "kettle",
    "desk lamp",
    "phone case",
    "router",
    "jacket",
    "blender",
    "monitor",
    "tent",
]
_PROBLEMS = ["arrived broken", "never arrived", "is the wrong size", "stopped working", "was charged twice"]
_SENTENCES = [
    "I have been a customer for years and this has never happened before.",
    "The box was crushed on one side and the tape was open.",
    "Could you send a replacement before my trip on Friday?",
    "I tried turning it off and on again but nothing changed.",
    "The tracking page has said out for delivery for four days now.",
    "Please tell me whether I should send it back or keep it.",
    "My neighbour ordered the same thing and got it the next day.",
    "I attached a photo of the label and of the damage to my last message.",
    "The instructions in the manual do not match the model I received.",
    "I would prefer a refund to the original card if a replacement takes long.",
]
_CATEGORIES = [
    "shipping | damaged",
    "shipping | lost",
    "returns | size",
    "billing | double charge",
    "product | faulty",
]


def _row(rng: random.Random, order: int) -> dict[str, str]:
    extra = min(int(rng.expovariate(1 / 6)), 40)
    text = " ".join(rng.choice(_SENTENCES) for _ in range(extra))
    prompt = f"Hello, my order #{order} of a {rng.choice(_PRODUCTS)} {rng.choice(_PROBLEMS)}. {text}".strip()
    if rng.random() < 0.05:
        prompt += f" You can reach me at customer{order}@example.com."
    return {"prompt": prompt, "completion": f"Ticket | {rng.choice(_CATEGORIES)} | order {order}"}


def generate(path: Path, rows: int, seed: int = 0) -> Path:
    """Write `rows` JSONL rows: 3% exact duplicates, 3% near duplicates (another order number) of recent rows."""
    rng = random.Random(seed)
    recent: list[dict[str, str]] = []
    with path.open("w") as fh:
        for i in range(rows):
            draw = rng.random()
            if recent and draw < 0.03:
                row = rng.choice(recent)
            elif recent and draw < 0.06:
                near = rng.choice(recent)
                row = {"prompt": near["prompt"].replace("#", "#9", 1), "completion": near["completion"]}
            else:
                row = _row(rng, 100000 + i)
                if len(recent) < 1000:
                    recent.append(row)
                else:
                    recent[i % 1000] = row
            fh.write(json.dumps(row) + "\n")
    return path


def child(path: str) -> None:
    """Prepare `path` in this process (the code on sys.path: now or before) and print the figures as JSON."""
    import resource

    start = time.monotonic()
    from trainer.data import prepare
    from trainer.hygiene import check

    splits, report = prepare(path)
    prepared = time.monotonic() - start
    _, hygiene = check(splits, redact_pii=False, threshold=THRESHOLD)
    wall = time.monotonic() - start
    figures = {
        "wall_s": round(wall, 1),
        "prepare_s": round(prepared, 1),
        "rows_per_s": round(report.rows_read / wall),
        "rows_read": report.rows_read,
        "duplicates_dropped": report.duplicates_dropped,
        "splits": report.splits,
        "near_duplicate_pairs": hygiene.near_duplicate_pairs,
        "near_duplicate_sample": getattr(hygiene, "near_duplicate_sample", {}),
        "pii_rows": hygiene.pii_rows,
        "peak_rss_mb_self": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    print(json.dumps(figures))


def measure(path: Path, code: Path, limit_gb: float, timeout_s: float) -> dict[str, Any]:
    """Run `child` with `code` first on the path; peak RSS by wait4; stopped past the memory or time limit."""
    import psutil

    env = {**os.environ, "PYTHONPATH": str(code)}
    cmd = [sys.executable, "-m", "loadtests.bench_dataprep", "--child", str(path)]
    proc = subprocess.Popen(cmd, cwd=code, env=env, stdout=subprocess.PIPE, text=True)
    watched, start, stopped, rss = psutil.Process(proc.pid), time.monotonic(), "", 0
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        try:
            rss = max(rss, watched.memory_info().rss)
        except psutil.NoSuchProcess:
            continue
        if rss > limit_gb * 2**30:
            stopped = f"stopped at {rss / 2**30:.1f} GB RSS after {time.monotonic() - start:.0f} s"
        elif time.monotonic() - start > timeout_s:
            stopped = f"stopped after {timeout_s:.0f} s at {rss / 2**30:.1f} GB RSS"
        if stopped:
            proc.kill()
            _, status, usage = os.wait4(proc.pid, 0)
            break
        time.sleep(0.2)  # sampling interval of the RSS watch, not a wait for a condition
    proc.returncode = status  # reaped here (wait4), so Popen must not wait for it again
    out = proc.stdout.read() if proc.stdout else ""
    peak = round(usage.ru_maxrss / 1024, 1)  # Linux: kilobytes
    if stopped:
        return {"stopped": stopped, "peak_rss_mb": peak, "wall_s": round(time.monotonic() - start, 1)}
    if status != 0:
        raise SystemExit(f"{' '.join(cmd)} failed with status {status}")
    return {**json.loads(out.strip().splitlines()[-1]), "peak_rss_mb": peak}


def export(ref: str, into: Path) -> Path:
    """The packages of `ref` (trainer, registry, loadtests) in `into`, by git archive (the checkout is untouched)."""
    archive = subprocess.run(
        ["git", "archive", ref, "trainer", "registry", "loadtests"], cwd=ROOT, capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    (into / "loadtests" / "bench_dataprep.py").write_bytes(Path(__file__).read_bytes())
    return into


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--before", default=BEFORE, help="git ref of the in-memory code ('' to skip)")
    parser.add_argument("--before-limit-gb", type=float, default=8.0)
    parser.add_argument("--before-timeout-s", type=float, default=1800.0)
    parser.add_argument("--out", type=Path, default=None, help="results folder (default loadtests/results)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    from loadtests.record import RESULTS, write_result

    with tempfile.TemporaryDirectory(prefix="bench-dataprep-") as tmp:
        work = Path(tmp)
        start = time.monotonic()
        data = generate(work / "tickets.jsonl", args.rows)
        print(
            f"generated {args.rows} rows ({data.stat().st_size / 2**20:.0f} MiB) in {time.monotonic() - start:.0f} s"
        )
        with ThreadPoolExecutor(2) as pool:  # side by side: the machine is shared, this halves the wait
            after_run = pool.submit(measure, data, ROOT, float("inf"), float("inf"))
            before_run = None
            if args.before:
                code = export(args.before, Path(tempfile.mkdtemp(dir=tmp)))
                before_run = pool.submit(measure, data, code, args.before_limit_gb, args.before_timeout_s)
            after = after_run.result()
            print("after:", json.dumps(after))
            before = before_run.result() if before_run else None
            print("before:", json.dumps(before))
        figures = {
            "rows": args.rows,
            "file_mib": round(data.stat().st_size / 2**20, 1),
            "threshold": THRESHOLD,
            "load_average": [round(x, 1) for x in os.getloadavg()],
            "after": after,
            "before": before,
            "before_ref": args.before,
            "side_by_side": bool(args.before),
        }
    print(write_result("bench_dataprep", figures, args.out or RESULTS))


if __name__ == "__main__":
    main()
