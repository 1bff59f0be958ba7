"""Engine-level multi-LoRA throughput: base vs adapters, our CPU LoRA ops vs vLLM's stock ops.

    python -m loadtests.bench_lora                       # SmolLM2, 64 requests x 32 tokens, r=16
    python -m loadtests.bench_lora --base-model tiny --requests 16 --tokens 8 --rounds 1   # seconds
    python -m loadtests.bench_lora --dtype float32 --configs ours,torch --kernel avx2 \
        --result bench_lora_f32_avx2     # float32: the AVX2 op forced vs the torch path

Starts one vLLM AsyncLLM per configuration, all at once in this process (each engine core is its
own process, idle while another measures):
  ours   - LoRA enabled, the project's CPU LoRA ops (serving/engine/cpu/cpu_lora.py; for bf16 and float32 the
           compiled op of lora_kernel.py)
  stock  - LoRA enabled, vLLM's own CPU LoRA ops (LORA_PLATFORM_STOCK_CPU_LORA=1)
  torch  - LoRA enabled, the project's CPU LoRA ops on their torch path (no compiled op)
  nolora - LoRA disabled (base requests only)
and measures, in each, the scenarios base / 1 adapter / N adapters mixed / base + N adapters
mixed, all requests in flight at once, `ignore_eos` so every request makes exactly --tokens
tokens. Scenarios of every engine are interleaved and repeated --rounds times (stock: once, it is
slow); each figure is the median over rounds, so a slow moment of the shared machine hits one
round of one scenario, not a whole configuration. Writes JSON under loadtests/results/ and prints
ratios to base.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from loadtests.record import RESULTS, write_result
from serving.experiments.stats import percentile
from testkit.adapters import make_adapters

PROMPT = "Summarize in one line: the customer says the order arrived late and the box was damaged."


SCENARIOS = ("base", "one_adapter", "n_adapters_mixed", "base_plus_n_mixed")


class Bench:
    """One engine configuration and its scenario measurements."""

    def __init__(self, label: str, base_path: Path, adapters: list[Path], args: argparse.Namespace):
        self.label, self.base_path, self.args = label, base_path, args
        self.lora = label != "nolora"
        self.adapters = adapters if self.lora else []
        self.engine: Any = None
        self.requests: list[Any] = []
        self.samples: dict[str, list[dict[str, float]]] = {}
        self.start_s = 0.0
        self.counter = 0

    async def start(self) -> None:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.lora.request import LoRARequest
        from vllm.v1.engine.async_llm import AsyncLLM

        # read by the plugin in the engine-core process, which is spawned here
        os.environ["LORA_PLATFORM_STOCK_CPU_LORA"] = "1" if self.label == "stock" else "0"
        kernel = "torch" if self.label == "torch" else self.args.kernel
        os.environ["LORA_PLATFORM_CPU_LORA_KERNEL"] = kernel
        t0 = time.monotonic()
        self.engine = AsyncLLM.from_engine_args(
            AsyncEngineArgs(
                model=str(self.base_path),
                dtype=self.args.dtype,
                enable_lora=self.lora,
                max_loras=max(1, len(self.adapters)),
                max_lora_rank=self.args.rank if self.lora else 16,
                max_model_len=512,
                max_num_seqs=max(64, self.args.requests),
                kv_cache_memory_bytes=2 << 30,
                enforce_eager=True,
                seed=0,
            )
        )
        self.start_s = time.monotonic() - t0
        self.requests = [LoRARequest(f"a{i}", i + 1, str(p)) for i, p in enumerate(self.adapters)]
        for r in self.requests:
            await self.engine.add_lora(r)

    def scenarios(self) -> tuple[str, ...]:
        return SCENARIOS if self.lora else SCENARIOS[:1]

    def loras(self, scenario: str) -> list[Any]:
        return {
            "base": [None],
            "one_adapter": self.requests[:1],
            "n_adapters_mixed": self.requests,
            "base_plus_n_mixed": [None, *self.requests],
        }[scenario]

    async def one(self, lora: Any) -> int:
        from vllm import SamplingParams

        sp = SamplingParams(max_tokens=self.args.tokens, temperature=0, ignore_eos=True)
        self.counter += 1
        last = None
        async for out in self.engine.generate(
            {"prompt": PROMPT}, sp, f"{self.label}-{self.counter}", lora_request=lora
        ):
            last = out
        return len(last.outputs[0].token_ids) if last else 0

    async def measure(self, scenario: str) -> None:
        loras = self.loras(scenario)
        n = self.args.requests
        await asyncio.gather(*[self.one(loras[i % len(loras)]) for i in range(min(8, n))])  # warm-up
        t = time.monotonic()
        tokens = sum(await asyncio.gather(*[self.one(loras[i % len(loras)]) for i in range(n)]))
        dt = time.monotonic() - t
        sample = {"tokens": tokens, "seconds": round(dt, 3), "tokens_per_s": round(tokens / dt, 1)}
        self.samples.setdefault(scenario, []).append(sample)

    def results(self) -> dict[str, Any]:
        out: dict[str, Any] = {"start_s": round(self.start_s, 1)}
        for scenario, samples in self.samples.items():
            rates = [s["tokens_per_s"] for s in samples]
            out[scenario] = {
                "tokens_per_s": round(percentile(rates, 50) or 0.0, 1),
                "rounds": rates,
                "tokens": samples[0]["tokens"],
            }
        return out

    def shutdown(self) -> None:
        if self.engine is not None:
            self.engine.shutdown()
            self.engine = None  # its __del__ runs now, not at interpreter exit


def threads() -> int:
    import torch

    return int(torch.get_num_threads())


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base-model", default="embedded/smollm2-135m-instruct-q4_1")
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--adapters", type=int, default=4)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--configs", default="ours,stock,nolora", help="of ours, stock, torch, nolora")
    parser.add_argument(
        "--kernel", default="auto", help="LORA_PLATFORM_CPU_LORA_KERNEL for `ours`: auto, avx512, avx2, torch"
    )
    parser.add_argument(
        "--result", default="bench_lora", help="the result's name (loadtests/results/NAME.json)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="interleaved repeats; figures are medians")
    parser.add_argument("--stock-rounds", type=int, default=1, help="repeats for the (slow) stock ops")
    parser.add_argument("--out-dir", default=str(RESULTS))
    args = parser.parse_args()

    from registry.basemodels import resolve_base_model

    base = resolve_base_model(args.base_model)
    report: dict[str, Any] = {
        "base_model": base.id,
        "args": vars(args),
        "torch_threads": threads(),
        "configs": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        adapters = make_adapters(base.path, args.adapters, args.rank, Path(tmp))
        benches = [Bench(label, base.path, adapters, args) for label in args.configs.split(",")]
        try:
            for bench in benches:
                await bench.start()
            for round_ in range(args.rounds):
                for bench in benches:
                    if bench.label == "stock" and round_ >= args.stock_rounds:
                        continue
                    for scenario in bench.scenarios():
                        await bench.measure(scenario)
                print(f"round {round_ + 1}/{args.rounds} done", flush=True)
        finally:
            for bench in benches:
                bench.shutdown()
            await asyncio.sleep(1)
        for bench in benches:
            report["configs"][bench.label] = bench.results()
            print(bench.label, json.dumps(report["configs"][bench.label]), flush=True)
    configs = report["configs"]
    ratios: dict[str, float] = {}
    for label, res in configs.items():
        b = res["base"]["tokens_per_s"]
        for key in ("one_adapter", "n_adapters_mixed", "base_plus_n_mixed"):
            if key in res:
                ratios[f"{label}:{key}/base"] = round(res[key]["tokens_per_s"] / b, 3)
    if "nolora" in configs:
        for label in ("ours", "stock"):
            if label in configs:
                ratios[f"{label}:base/nolora_base"] = round(
                    configs[label]["base"]["tokens_per_s"] / configs["nolora"]["base"]["tokens_per_s"], 3
                )
    for other in ("stock", "torch"):
        if "ours" in configs and other in configs:
            for key in ("one_adapter", "n_adapters_mixed", "base_plus_n_mixed"):
                ratios[f"ours/{other}:{key}"] = round(
                    configs["ours"][key]["tokens_per_s"] / configs[other][key]["tokens_per_s"], 2
                )
    report["ratios"] = ratios
    out = write_result(args.result, report, args.out_dir)
    print(json.dumps(ratios, indent=2))
    print(f"written to {out}")


if __name__ == "__main__":
    asyncio.run(main())
