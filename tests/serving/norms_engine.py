"""Run by test_cpu_norms.py in a subprocess: a vLLM engine (in-process engine core and model) on
the tiny model, in the dtype `platform serve --dtype auto` runs on this CPU. Prints, as JSON, the
RMSNorm provider vLLM picks for the model's hidden states, and the greedy tokens and their logprobs
of a few prompts with that provider and with vLLM's PyTorch reference (`native`) in its place."""

from __future__ import annotations

import json
import os
import sys

os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # engine core in this process: its choice is visible


def main() -> None:
    import torch
    from vllm import SamplingParams, ir

    from serving.engine.cpu import lora_kernel
    from tests.serving.bf16_engine import tiny_lora_llm

    # SmolLM2's dtype as `platform serve --dtype auto` runs it here: bf16, or float32 without bf16 instructions
    dtype = "bfloat16" if lora_kernel.cpu_has_bf16() else "float32"
    llm = tiny_lora_llm(sys.argv[1], dtype=dtype)
    hidden = llm.llm_engine.model_config.get_hidden_size()
    x, residual = (torch.randn(4, hidden, dtype=getattr(torch, dtype)) for _ in range(2))
    weight = torch.ones(hidden, dtype=getattr(torch, dtype))
    sp = SamplingParams(max_tokens=12, temperature=0, logprobs=1)
    prompts = ["The order arrived late", "Reset my password", "Where is my refund?", "Hello there"]

    def answers() -> dict[str, list[list[float]]]:
        outs = llm.generate(prompts, sp, use_tqdm=False)
        return {
            "tokens": [list(o.outputs[0].token_ids) for o in outs],
            "logprobs": [
                [
                    lp[t].logprob
                    for lp, t in zip(o.outputs[0].logprobs or [], o.outputs[0].token_ids, strict=True)
                ]
                for o in outs
            ],
        }

    result = {
        "rms_norm": ir.ops.rms_norm.dispatch(x, weight, 1e-5).provider,
        "fused_add_rms_norm": ir.ops.fused_add_rms_norm.dispatch(x, residual, weight, 1e-5).provider,
        "chosen": answers(),
    }
    with ir.ops.rms_norm.set_priority(["native"]), ir.ops.fused_add_rms_norm.set_priority(["native"]):
        result["native"] = answers()
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
