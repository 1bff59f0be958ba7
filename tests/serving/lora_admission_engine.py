"""Run by test_lora_admission.py in a subprocess: a vLLM engine (in-process engine core) on the tiny
model with two LoRA slots, the scheduler our server sets on CPU (or vLLM's with `stock`), stepped
one step at a time. Adapters x and y run (x further along); then a request for z, which needs a
slot, arrives before more requests for x and y. Prints JSON: per request, the step of its first
token and the step it finished, and its token count."""

from __future__ import annotations

import json
import os
import sys

os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # engine core in this process, stepped by hand


def main() -> None:
    from vllm import SamplingParams
    from vllm.lora.request import LoRARequest

    from serving.engine.vllm import SLOT_AWARE_SCHEDULER
    from tests.serving.bf16_engine import tiny_lora_llm

    base, stock, *paths = sys.argv[1:6]
    scheduler = None if stock == "stock" else SLOT_AWARE_SCHEDULER
    llm = tiny_lora_llm(base, max_loras=2, max_cpu_loras=3, dtype="float32", scheduler_cls=scheduler)
    engine = llm.llm_engine
    x, y, z = (LoRARequest(name, i + 1, p) for i, (name, p) in enumerate(zip("xyz", paths, strict=True)))
    first: dict[str, int] = {}
    finished: dict[str, int] = {}
    tokens: dict[str, int] = {}
    step = 0

    def add(request_id: str, lora: LoRARequest, max_tokens: int) -> None:
        sp = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)
        engine.add_request(request_id, f"Request {request_id} for the support team", sp, lora_request=lora)

    def run(steps: int) -> None:
        nonlocal step
        for _ in range(steps):
            if not engine.has_unfinished_requests():
                return
            step += 1
            for out in engine.step():
                if out.outputs and out.outputs[0].token_ids:
                    first.setdefault(out.request_id, step)
                if out.finished:
                    finished[out.request_id] = step
                    tokens[out.request_id] = len(out.outputs[0].token_ids)

    add("x1", x, 6)
    run(2)
    add("y1", y, 16)
    run(1)
    add("z1", z, 2)  # both slots are taken: z waits for one
    for request_id, lora in (("x2", x), ("x3", x), ("y2", y)):
        add(request_id, lora, 16)
    run(200)
    print("RESULT " + json.dumps({"first": first, "finished": finished, "tokens": tokens}))


if __name__ == "__main__":
    main()
