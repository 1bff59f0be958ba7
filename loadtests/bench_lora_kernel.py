"""Op level: one decoder layer's LoRA (SmolLM2-135M shapes) on the torch path vs the compiled variants.

    python -m loadtests.bench_lora_kernel                  # r=16; decode and prefill batches
    python -m loadtests.bench_lora_kernel --reps 20        # quicker, noisier

For each batch (rows and how they split over adapters) and dtype, the time of the four LoRA layers of
one SmolLM2 decoder layer (qkv, o, gate_up, down: what `add_lora_linear` gets), in microseconds of
the thread's CPU time (one thread; wall time with --threads > 1), for:
  torch   - cpu_lora.TorchLoRA (the fallback: aten / vLLM's oneDNN products, bmm over padded segments)
  avx2    - lora_f32.c built for AVX2/FMA (float32), what AVX2-only CPUs (AMD Zen 2/3) run
  avx512  - lora_f32.c built for AVX512F (float32), or lora_bf16.c's AVX512-BF16 kernel (bf16)
  amx     - lora_bf16.c's AMX kernel (bf16)
Variants the CPU lacks are left out. One thread by default (--threads). Variants are interleaved and each figure is the median of
--reps rounds, so a slow moment of a shared machine hits one round of each, not one variant.
Writes loadtests/results/bench_lora_avx2.json.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

from loadtests.record import RESULTS, write_result
from serving.experiments.stats import percentile

LAYERS = {
    "qkv": (576, (576, 192, 192)),
    "o": (576, (576,)),
    "gate_up": (576, (1536, 1536)),
    "down": (1536, (576,)),
}
"""SmolLM2-135M: input width K and output slices of each LoRA layer of a decoder layer."""
DECODER_LAYERS = 30
BATCHES = {
    "decode 16 rows, 1 adapter": (16, 1),
    "decode 16 rows, 4 adapters": (16, 4),
    "decode 1 row, 1 adapter": (1, 1),
    "prefill 256 rows, 4 adapters": (256, 4),
}
"""name -> (rows, adapters); rows are spread over the adapters in turn, as concurrent requests are."""


def _layer(torch: Any, k: int, sizes: tuple[int, ...], rank: int, dtype: Any, gen: Any) -> tuple[Any, Any]:
    slots = 4
    a = tuple((torch.randn(slots, 1, rank, k, generator=gen) * 0.05).to(dtype) for _ in sizes)
    b = tuple((torch.randn(slots, 1, n, rank, generator=gen) * 0.05).to(dtype) for n in sizes)
    return a, b


def variants(dtype_name: str) -> dict[str, Any]:
    """The compiled kernels this CPU runs for a dtype, by name (torch is measured separately)."""
    from serving.engine.cpu import lora_kernel

    out: dict[str, Any] = {}
    if dtype_name == "float32":
        for name in ("avx2", "avx512"):
            if lora_kernel.f32_variant(want=name):
                out[name] = lora_kernel.load_f32(name)
    else:
        kernel = lora_kernel.load()
        if kernel is not None:
            out["avx512"] = (kernel, False)
            if kernel.use_amx:
                out["amx"] = (kernel, True)
    return {k: v for k, v in out.items() if v is not None}


def calls(dtype_name: str, rows: int, adapters: int, rank: int) -> dict[str, Callable[[], None]]:
    """One callable per variant that runs the four LoRA layers of a decoder layer once."""
    import torch

    from serving.engine.cpu import lora_kernel
    from serving.engine.cpu.cpu_lora import StepPlan, TorchLoRA

    dtype = torch.float32 if dtype_name == "float32" else torch.bfloat16
    gen = torch.Generator().manual_seed(0)
    indices = torch.arange(rows) % adapters
    plan = StepPlan(indices, indices)
    layers = []
    for k, sizes in LAYERS.values():
        a, b = _layer(torch, k, sizes, rank, dtype, gen)
        x = torch.randn(rows, k, generator=gen).to(dtype)
        y = torch.zeros(rows, sum(sizes), dtype=dtype)
        layers.append((a, b, sizes, x, y))
    torch_lora = TorchLoRA()
    rows_arg = plan.kernel_rows()

    def torch_path() -> None:
        for a, b, sizes, x, y in layers:
            torch_lora.run(y, x, a, b, sizes, plan, 1.0)

    out = {"torch": torch_path}
    for name, kernel in variants(dtype_name).items():
        amx = None
        if isinstance(kernel, tuple):
            kernel, amx = kernel
        bound = []
        for a, b, sizes, x, y in layers:
            if amx is not None:
                kernel.use_amx = amx
            call = lora_kernel.bind(kernel, lora_kernel.PackedLayer(a, b, sizes))
            assert call is not None
            bound.append((call, x, y))

        def compiled(bound: list[Any] = bound) -> None:
            for call, x, y in bound:
                call(x, y, rows_arg, 1.0)

        out[name] = compiled
    return out


def measure(fns: dict[str, Callable[[], None]], reps: int, clock: Callable[[], float]) -> dict[str, float]:
    """Median microseconds per call of each function, rounds interleaved (after a warm-up)."""
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        for _ in range(3):
            fn()
    for _ in range(reps):
        for name, fn in fns.items():
            t = clock()
            fn()
            samples[name].append((clock() - t) * 1e6)
    return {name: round(percentile(s, 50) or 0.0, 1) for name, s in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--reps", type=int, default=100)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch and kernel threads (1: an op's own cost, no OpenMP waits)",
    )
    parser.add_argument("--out-dir", default=str(RESULTS))
    args = parser.parse_args()

    import os

    import torch

    from serving.engine.cpu import lora_kernel

    torch.set_num_threads(args.threads)
    os.environ[lora_kernel.ENV_THREADS] = str(args.threads)  # read when a library is loaded
    # one thread: its own CPU time, which the other processes of a shared machine do not inflate
    clock = time.thread_time if args.threads == 1 else time.perf_counter
    report: dict[str, Any] = {
        "args": vars(args),
        "torch_threads": torch.get_num_threads(),
        "clock": "thread CPU time" if args.threads == 1 else "wall time",
        "decoder_layers": DECODER_LAYERS,
        "batches": {},
    }
    for batch, (rows, adapters) in BATCHES.items():
        for dtype_name in ("float32", "bfloat16"):
            us = measure(calls(dtype_name, rows, adapters, args.rank), args.reps, clock)
            report["batches"].setdefault(batch, {})[dtype_name] = us
            print(batch, dtype_name, us, flush=True)
    ratios = {}
    for batch, by_dtype in report["batches"].items():
        for dtype_name, us in by_dtype.items():
            for name, value in us.items():
                if name != "torch" and value:
                    ratios[f"{batch}, {dtype_name}: torch/{name}"] = round(us["torch"] / value, 2)
    report["speedup_over_torch"] = ratios
    print(f"written to {write_result('bench_lora_avx2', report, args.out_dir)}")


if __name__ == "__main__":
    main()
