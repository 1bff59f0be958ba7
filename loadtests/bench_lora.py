"""Engine-level multi-LoRA throughput: base vs adapters, our CPU LoRA ops vs vLLM's stock ops.

    python loadtests/bench_lora.py                       # SmolLM2, 64 requests x 32 tokens, r=16
    python loadtests/bench_lora.py --base-model tiny --requests 16 --tokens 8   # seconds, for CI

Runs one vLLM AsyncLLM per configuration, one after another, in this process:
  ours   - LoRA enabled, the project's CPU LoRA ops (serving/engine/cpu_lora.py)
  stock  - LoRA enabled, vLLM's own CPU LoRA ops (LORA_PLATFORM_STOCK_CPU_LORA=1)
  nolora - LoRA disabled (base requests only)
and, in each, the scenarios base / 1 adapter / N adapters mixed / base + N adapters mixed, all
requests in flight at once, `ignore_eos` so every request makes exactly --tokens tokens.
Writes JSON under loadtests/results/ and prints ratios to base. Figures are ratios from one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from loadtests.common import make_adapters  # noqa: E402

PROMPT = "Summarize in one line: the customer says the order arrived late and the box was damaged."


async def run_config(
    label: str, base_path: Path, adapters: list[Path], args: argparse.Namespace, lora: bool, stock: bool
) -> dict[str, Any]:
    from vllm import SamplingParams
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.lora.request import LoRARequest
    from vllm.v1.engine.async_llm import AsyncLLM

    os.environ["LORA_PLATFORM_STOCK_CPU_LORA"] = "1" if stock else "0"
    t0 = time.monotonic()
    engine = AsyncLLM.from_engine_args(
        AsyncEngineArgs(
            model=str(base_path),
            dtype=args.dtype,
            enable_lora=lora,
            max_loras=max(1, len(adapters)),
            max_lora_rank=args.rank if lora else 16,
            max_model_len=512,
            max_num_seqs=max(64, args.requests),
            kv_cache_memory_bytes=2 << 30,
            enforce_eager=True,
            seed=0,
        )
    )
    start_s = time.monotonic() - t0
    reqs = [LoRARequest(f"a{i}", i + 1, str(p)) for i, p in enumerate(adapters)]
    for r in reqs if lora else []:
        await engine.add_lora(r)
    sp = SamplingParams(max_tokens=args.tokens, temperature=0, ignore_eos=True)
    counter = 0

    async def one(lr: Any) -> int:
        nonlocal counter
        counter += 1
        last = None
        async for out in engine.generate({"prompt": PROMPT}, sp, f"{label}-{counter}", lora_request=lr):
            last = out
        return len(last.outputs[0].token_ids) if last else 0

    async def scenario(loras: list[Any]) -> dict[str, float]:
        await asyncio.gather(*[one(loras[i % len(loras)]) for i in range(min(8, args.requests))])  # warm-up
        t = time.monotonic()
        tokens = sum(await asyncio.gather(*[one(loras[i % len(loras)]) for i in range(args.requests)]))
        dt = time.monotonic() - t
        return {"tokens": tokens, "seconds": round(dt, 3), "tokens_per_s": round(tokens / dt, 1)}

    results = {"start_s": round(start_s, 1), "base": await scenario([None])}
    if lora:
        results["one_adapter"] = await scenario(reqs[:1])
        results["n_adapters_mixed"] = await scenario(reqs)
        results["base_plus_n_mixed"] = await scenario([None, *reqs])
    engine.shutdown()
    await asyncio.sleep(1)
    return results


def machine() -> dict[str, Any]:
    import torch

    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


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
    parser.add_argument("--configs", default="ours,stock,nolora")
    parser.add_argument("--out", default=str(ROOT / "loadtests" / "results" / "bench_lora.json"))
    args = parser.parse_args()

    from registry.basemodels import resolve_base_model

    base = resolve_base_model(args.base_model)
    report: dict[str, Any] = {"base_model": base.id, "args": vars(args), "machine": machine(), "configs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        adapters = make_adapters(base.path, args.adapters, args.rank, Path(tmp))
        for label in args.configs.split(","):
            lora = label != "nolora"
            report["configs"][label] = await run_config(
                label, base.path, adapters, args, lora, stock=label == "stock"
            )
            print(label, json.dumps(report["configs"][label]), flush=True)
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
    if "ours" in configs and "stock" in configs:
        for key in ("one_adapter", "n_adapters_mixed", "base_plus_n_mixed"):
            ratios[f"ours/stock:{key}"] = round(
                configs["ours"][key]["tokens_per_s"] / configs["stock"][key]["tokens_per_s"], 2
            )
    report["ratios"] = ratios
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(ratios, indent=2))
    print(f"written to {args.out}")


if __name__ == "__main__":
    asyncio.run(main())
