"""Run by test_lora_kernel.py (and test_lora_kernel_f32.py, with `float32` as a 4th argument) in a
subprocess: a bf16 vLLM engine (in-process engine core) on the tiny model with one LoRA slot, so
adapters take turns in the same slot. Prints JSON: outputs, the kernel that ran, layers bound to it."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # engine core in this process: the kernel is visible


def tiny_lora_llm(base: str, **options: object) -> Any:
    """A small LoRA-enabled vLLM `LLM` on the tiny model at `base` (rank 8, 8 sequences, 256 MiB of
    KV cache, eager, seeded); `options` adds or overrides engine arguments (slots, dtype)."""
    from vllm import LLM

    return LLM(
        **{
            "model": base,
            "enable_lora": True,
            "max_lora_rank": 8,
            "max_model_len": 256,
            "max_num_seqs": 8,
            "kv_cache_memory_bytes": 256 << 20,
            "enforce_eager": True,
            "seed": 0,
            **options,
        }
    )


def main() -> None:
    from vllm import SamplingParams
    from vllm.lora.request import LoRARequest

    from serving.engine.cpu import cpu_lora, lora_kernel

    base, first, second = sys.argv[1:4]
    dtype = sys.argv[4] if len(sys.argv) > 4 else "bfloat16"
    llm = tiny_lora_llm(base, max_loras=1, max_cpu_loras=1, dtype=dtype)
    sp = SamplingParams(max_tokens=12, temperature=0)
    prompts = ["The order arrived late", "Reset my password", "Where is my refund?", "Hello there"]

    def gen(lora: LoRARequest | None) -> list[list[int]]:
        outs = llm.generate(prompts, sp, lora_request=lora, use_tqdm=False)
        return [list(o.outputs[0].token_ids) for o in outs]

    a, b = LoRARequest("a", 1, first), LoRARequest("b", 2, second)
    kernel = lora_kernel.load() if dtype == "bfloat16" else lora_kernel.load_f32()
    result = {
        "plugin": cpu_lora.is_active(),
        "kernel": kernel.name if kernel else None,
        "base": gen(None),
        "a": gen(a),
        "b": gen(b),  # b evicts a from the only slot
        "a_again": gen(a),  # and a comes back into it
        "layers_bound": cpu_lora.STATS["layers_bound"],
    }
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
