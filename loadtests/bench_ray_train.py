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

from loadtests.bench_ddp import NOTE, ROOT, parser, run_arguments, run_figures
from loadtests.bench_ddp import train as train_processes
from loadtests.record import write_result


def train_on_ray(workdir: Path, workers: int, batch: int, args: argparse.Namespace) -> dict[str, Any]:
    """`platform train --workers N` on a local Ray; its throughput and loss (rank 0's run folder)."""
    out = workdir / f"ray-{workers}"
    command = [sys.executable, "-m", "cli.main", "train", "--workers", str(workers)]
    command += ["--output-dir", str(out), *run_arguments(args, batch)]
    command += ["--checkpoint-storage", str(workdir / "ray-checkpoints")]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # Ray gives each 1-CPU worker OMP_NUM_THREADS=1
    start = time.monotonic()
    done = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-4000:]}")
    wall = time.monotonic() - start
    return {"ray_workers": workers, "batch_per_process": batch, **run_figures(out, wall)}


def main() -> None:
    args = parser(__doc__ or "", "N: threads of the one process, Ray workers").parse_args()
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
        "note": NOTE,
    }
    print(json.dumps(figures, indent=2))
    print(write_result("bench_ray_train", figures))


if __name__ == "__main__":
    main()
