"""Training on several processes: 1 process x N threads against N processes x 1 thread (torchrun, gloo).

The same `platform train` run (base model, data, steps, seed, global batch) twice, each in its own
process tree: one process with `OMP_NUM_THREADS=N` and batch size B, then `torchrun --nproc_per_node N`
with one thread each and batch size B/N. Figures per layout: training tokens/s (real input tokens of
every rank / wall time of `train()`, from the run's lineage), the wall time of the whole command,
and the final training loss (the two runs should agree). Run:

    python -m loadtests.bench_ddp --steps 20 --base-model tiny
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

from loadtests.record import write_result

ROOT = Path(__file__).resolve().parents[1]


def train(
    workdir: Path, processes: int, threads: int, batch: int, args: argparse.Namespace
) -> dict[str, Any]:
    """One run of `platform train` laid out as `processes` x `threads`; its throughput and loss."""
    out = workdir / f"{processes}x{threads}"
    launch = [sys.executable, "-m", "cli.main"]
    if processes > 1:
        launch = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            str(processes),
        ]
        launch += ["-m", "cli.main"]
    command = [*launch, "train", "--output-dir", str(out), *run_arguments(args, batch)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
    start = time.monotonic()
    subprocess.run(command, cwd=workdir, env=env, check=True, capture_output=True, text=True)
    wall = time.monotonic() - start
    figures = run_figures(out, wall)
    return {"processes": processes, "threads_per_process": threads, "batch_per_process": batch, **figures}


def run_arguments(args: argparse.Namespace, batch: int) -> list[str]:
    """`platform train` arguments of every layout's run (the same run, `batch` rows per process)."""
    return [
        "--base-model",
        args.base_model,
        "--name",
        "bench",
        "--no-push",
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


def run_figures(out: Path, wall: float) -> dict[str, Any]:
    """Throughput and final loss of the one run folder under `out` (rank 0's), from its lineage."""
    (run,) = out.iterdir()
    lineage = json.loads((run / "lineage.json").read_text())
    records = [json.loads(x) for x in (run / "train_log.jsonl").read_text().splitlines()]
    t = lineage["training"]
    return {
        "threads_per_process": lineage["hardware"].get("torch_threads"),
        "tokens": t["tokens"],
        "train_seconds": t["wall_seconds"],
        "tokens_per_second": t["tokens_per_second"],
        "command_seconds": round(wall, 1),
        "final_train_loss": [r["loss"] for r in records if "loss" in r][-1],
    }


def parser(description: str, cores: str) -> argparse.ArgumentParser:
    """The command line both training-layout benchmarks take (`cores`: what --cores means)."""
    parser = argparse.ArgumentParser(description=description.split("\n")[0])
    parser.add_argument("--base-model", default="tiny")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=8, help="global batch (rows per optimizer step)")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--cores", type=int, default=2, help=cores)
    return parser


NOTE = "other jobs on this machine lower the ratios: compare runs made with nothing else running"


def main() -> None:
    args = parser(__doc__ or "", "N: threads of the one process, processes of torchrun").parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        one = train(Path(tmp), 1, args.cores, args.batch, args)
        many = train(Path(tmp), args.cores, 1, args.batch // args.cores, args)
    figures = {
        "base_model": args.base_model,
        "steps": args.steps,
        "global_batch": args.batch,
        "seq_len": args.seq_len,
        "runs": [one, many],
        "processes_over_threads": round(many["tokens_per_second"] / one["tokens_per_second"], 2),
        "note": NOTE,
    }
    print(json.dumps(figures, indent=2))
    print(write_result("bench_ddp", figures))


if __name__ == "__main__":
    main()
