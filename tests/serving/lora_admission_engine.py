"""Run by test_lora_admission.py in a subprocess: a vLLM engine (in-process engine core) on the tiny
model with two LoRA slots, the scheduler our server sets on CPU (or vLLM's with `stock`), stepped
one step at a time on a virtual clock (STEP_S per step: requests' arrival times and the scheduler's
clock), so waits in seconds are the same on any machine. Runs the comma-separated scenarios one
after the other on one engine (an engine start is most of a run) and prints a `RESULT <scenario>
<json>` line for each: per request, the step of its first token, the step it finished and its
token ids.

Scenarios:
- `drain`: adapters x and y run (x further along); then a request for z, which needs a slot,
  arrives before more requests for x and y (slot turns off).
- `turn`: x and y run long requests; z arrives and waits for a slot (slot turns of TURN_S).
- `abort`: as `turn`, and y's request is aborted while it is paused.
- `near`: as `turn`, but x's request would end 3-4 steps after z has waited a turn.
- `nearer`: as `turn`, but x's request ends within 2 steps of z's turn.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # engine core in this process, stepped by hand

STEP_S = 0.1
TURN_S = 0.5


def main() -> None:
    from vllm.lora.request import LoRARequest

    from serving.engine.vllm import SLOT_AWARE_SCHEDULER
    from tests.serving.bf16_engine import tiny_lora_llm

    base, mode, scenarios, *paths = sys.argv[1:7]
    ours = mode != "stock"
    llm = tiny_lora_llm(
        base,
        max_loras=2,
        max_cpu_loras=3,
        dtype="float32",
        scheduler_cls=SLOT_AWARE_SCHEDULER if ours else None,
        additional_config={"lora_slot_turn_s": TURN_S},
    )
    engine = llm.llm_engine
    scheduler = engine.engine_core.engine_core.scheduler
    clock = [0]  # steps since the engine started: one clock for every scenario, never turned back
    if ours:
        scheduler.clock = lambda: clock[0] * STEP_S
    x, y, z = (LoRARequest(name, i + 1, p) for i, (name, p) in enumerate(zip("xyz", paths, strict=True)))
    for scenario in scenarios.split(","):  # one engine runs them in turn, each from an idle engine
        if ours:
            scheduler.turn_s = None if scenario == "drain" else TURN_S
        print(f"RESULT {scenario} " + json.dumps(run_scenario(engine, scheduler, scenario, clock, x, y, z)))


def run_scenario(
    engine: Any, scheduler: Any, scenario: str, clock: list[int], x: Any, y: Any, z: Any
) -> dict[str, Any]:
    """One scenario; steps are counted from its start."""
    from vllm import SamplingParams

    from serving.engine.cpu.lora_admission import adapter

    start = clock[0]
    result: dict[str, Any] = {}
    first: dict[str, int] = {}
    finished: dict[str, int] = {}
    tokens: dict[str, list[int]] = {}

    def add(request_id: str, lora: Any, max_tokens: int) -> None:
        sp = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)
        prompt = f"Request {request_id} for the support team"
        engine.add_request(request_id, prompt, sp, arrival_time=clock[0] * STEP_S, lora_request=lora)

    def run(steps: int) -> None:
        for _ in range(steps):
            if not engine.has_unfinished_requests():
                return
            clock[0] += 1
            step = clock[0] - start
            for out in engine.step():
                if out.outputs and out.outputs[0].token_ids:
                    first.setdefault(out.request_id, step)
                if out.finished:
                    finished[out.request_id] = step
                    tokens[out.request_id] = list(out.outputs[0].token_ids)

    if scenario == "drain":
        add("x1", x, 6)
        run(2)
        add("y1", y, 16)
        run(1)
        add("z1", z, 2)  # both slots are taken: z waits for one
        for request_id, lora in (("x2", x), ("x3", x), ("y2", y)):
            add(request_id, lora, 16)
    else:
        add("x1", x, {"near": 11, "nearer": 9}.get(scenario, 40))
        run(1)
        held = getattr(scheduler, "held_since", {})
        result["held_from"] = {str(a): round(t / STEP_S) - start for a, t in held.items()}
        add("y1", y, 40)
        run(2)
        add("z1", z, 4)  # both slots are taken for about 40 steps
    paused: list[str] = []
    if scenario == "abort":
        run(8)  # z has taken y's slot
        paused = [r.request_id.split("-")[0] for r in scheduler.running if adapter(r) in scheduler.paused]
        engine.abort_request(["y1"])
    run(300)
    # every request ended: the next scenario starts from an idle engine, well after this one's last step
    result["unfinished"] = engine.has_unfinished_requests()
    assert not result["unfinished"], f"{scenario}: requests left after 300 steps"
    clock[0] += 10
    result.update({"first": first, "finished": finished, "tokens": tokens, "paused": paused})
    return result


if __name__ == "__main__":
    main()
