"""Training on Ray: 1 process x N threads against `platform train --workers N` (N Ray Train workers
of 1 CPU each, a local Ray started by the command).

The same run as loadtests/bench_ddp.py (base model, data, steps, seed, global batch; its `train`
runs the one-process layout), then the Ray layout with batch size B/N per worker. Figures per
layout: training tokens/s (real input tokens of every rank / wall time of `train()`, from the
run's lineage), the wall time of the whole command (the Ray run's includes starting Ray and its
workers), and the final training loss. Run:

    python -m loadtests.bench_ray_train --steps 20 --base-model tiny
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from loadtests.bench_ddp import ROOT
from loadtests.bench_ddp import train as train_processes
from loadtests.record import write_result


def train_on_ray(workdir: Path, workers: int, batch: int, args: argparse.Namespace) -> dict[str, Any]:
    """`platform train --workers N` on a local Ray; its throughput and loss (rank 0's run folder)."""
    out = workdir / f"ray-{workers}"
    command = [sys.executable, "-m", "cli.main", "train", "--workers", str(workers), "--no-push"]
    command += ["--base-model", args.base_model, "--name", "bench", "--output-dir", str(out)]
    command += ["--checkpoint-storage", str(workdir / "ray-checkpoints")]
    command += [
        f"training.max_steps={args.steps}",
        f"training.batch_size={batch}",
        "training.grad_accum=1",
        "training.eval_every=0",
        "eval.max_examples=1",
        "eval.max_new_tokens=1",
        "eval.compare_base=false",
        f"data.max_seq_len={args.seq_len}",
        "data.overlong=truncate",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # Ray gives each 1-CPU worker OMP_NUM_THREADS=1
    start = time.monotonic()
    done = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-4000:]}")
    wall = time.monotonic() - start
    (run,) = out.iterdir()
    lineage = json.loads((run / "lineage.json").read_text())
    records = [json.loads(x) for x in (run / "train_log.jsonl").read_text().splitlines()]
    t = lineage["training"]
    return {
        "ray_workers": workers,
        "threads_per_process": lineage["hardware"].get("torch_threads"),
        "batch_per_process": batch,
        "tokens": t["tokens"],
        "train_seconds": t["wall_seconds"],
        "tokens_per_second": t["tokens_per_second"],
        "command_seconds": round(wall, 1),
        "final_train_loss": [r["loss"] for r in records if "loss" in r][-1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base-model", default="tiny")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=8, help="global batch (rows per optimizer step)")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--cores", type=int, default=2, help="N: threads of the one process, Ray workers")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        one = train_processes(Path(tmp), 1, args.cores, args.batch, args)
        ray = train_on_ray(Path(tmp), args.cores, args.batch // args.cores, args)
    figures = {
        "base_model": args.base_model,
        "steps": args.steps,
        "global_batch": args.batch,
        "seq_len": args.seq_len,
        "runs": [one, ray],
        "ray_workers_over_threads": round(ray["tokens_per_second"] / one["tokens_per_second"], 2),
        "note": "cores shared with other work on this machine: ratios are indicative",
    }
    print(json.dumps(figures, indent=2))
    print(write_result("bench_ray_train", figures))


if __name__ == "__main__":
    main()
