"""Run by test_lora_slots.py in a subprocess: a vLLM engine (in-process engine core) on the tiny
model in bf16 with two LoRA slots and three adapters. Batches of two adapters take turns; a third
adapter is also added between steps (what our server's load from the registry does). Prints JSON:
per batch, the slot activations vLLM logged and the adapters new to the slots; the outputs of the
first batch, asked for again at the end; every (prompt, adapter) output of every batch; and the
plugin's packing counters (cpu_lora.STATS) with whether the compiled op ran."""

from __future__ import annotations

import json
import logging
import os
import sys

os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # engine core in this process: its log is visible


class Activations(logging.Handler):
    """Counts vLLM's "Activating LoRA" debug lines (one per adapter copied into a slot)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += record.getMessage().startswith("Activating LoRA")


def main() -> None:
    from vllm import SamplingParams
    from vllm.lora.request import LoRARequest

    from serving.engine.cpu import cpu_lora, lora_kernel
    from tests.serving.bf16_engine import tiny_lora_llm

    base, *paths = sys.argv[1:5]
    llm = tiny_lora_llm(base, max_loras=2, max_cpu_loras=3, dtype="bfloat16")
    counter = Activations()
    manager_log = logging.getLogger("vllm.lora.model_manager")
    manager_log.addHandler(counter)
    manager_log.setLevel(logging.DEBUG)
    sp = SamplingParams(max_tokens=6, temperature=0)
    prompts = ["The order arrived late", "Reset my password"]
    a, b, c = (LoRARequest(name, i + 1, p) for i, (name, p) in enumerate(zip("abc", paths, strict=True)))
    slots: set[str] = set()
    batches = []
    outputs: dict[str, list[list[int]]] = {}

    def gen(pair: list[LoRARequest]) -> list[list[int]]:
        counter.count = 0
        outs = llm.generate(prompts, sp, lora_request=pair, use_tqdm=False)
        new = {r.lora_name for r in pair} - slots
        slots.intersection_update(r.lora_name for r in pair)
        slots.update(r.lora_name for r in pair)
        batches.append(
            {"adapters": [r.lora_name for r in pair], "activations": counter.count, "new": len(new)}
        )
        tokens = [list(o.outputs[0].token_ids) for o in outs]
        for i, (r, t) in enumerate(zip(pair, tokens, strict=True)):
            outputs.setdefault(f"{i} {r.lora_name}", []).append(t)
        return tokens

    first = gen([a, b])
    llm.llm_engine.add_lora(c)  # our server's load: c into vLLM's CPU cache
    again = gen([a, b])
    # every change of one adapter, both ways: whatever order vLLM visits a step's adapters in, one
    # of these finds the adapter it keeps in the least recently used slot
    for pair in ([b, c], [c, a], [a, b], [c, a], [b, c], [a, b]):
        gen(pair)
    compiled = lora_kernel.load() is not None and cpu_lora.is_active()
    stats = dict(cpu_lora.STATS, compiled=compiled)
    result = {"batches": batches, "first": first, "again": again, "outputs": outputs, "stats": stats}
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
