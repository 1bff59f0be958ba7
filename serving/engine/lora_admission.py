"""Slot-aware admission: a request whose adapter needs a slot is not starved by the running ones.

vLLM runs at most `max_loras` adapters in a step. Its scheduler skips a waiting request whose
adapter is not among the running ones while all slots are taken, and goes on admitting later
requests for the running adapters, so a slot frees only when one of them happens to have no
request left: while those adapters have steady traffic, the request waits behind every later one.

`SlotAwareScheduler` holds back, while such a request waits, the waiting requests of one running
adapter: the one whose running requests end soonest (at most their `max_tokens`; ties: the one
with fewer requests), so it drains and its slot goes to the request that waited. Requests for the
other running adapters and for the base model are admitted as before; held requests keep their
place in the queue. The engine core imports it by name (vLLM's `scheduler_cls`); used with the CPU
platform's synchronous scheduler. (On the 64-adapter benchmark it measured no change: there slots
turn over anyway, README.)
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Iterable
from typing import Any

from vllm.v1.core.sched.request_queue import SchedulingPolicy
from vllm.v1.core.sched.scheduler import Scheduler


def adapter(request: Any) -> int | None:
    lora = request.lora_request
    return lora.lora_int_id if lora is not None and lora.lora_int_id > 0 else None


def adapter_to_drain(running: Iterable[Any], waiting: Iterable[Any], max_loras: int) -> int | None:
    """The running adapter whose waiting requests to hold back, or None when no waiting request
    needs a slot that is taken."""
    counts: Counter[int] = Counter()
    left: dict[int, int] = {}  # per adapter: the most tokens one of its running requests may add
    for r in running:
        if (a := adapter(r)) is not None:
            counts[a] += 1
            left[a] = max(left.get(a, 0), r.max_tokens - r.num_output_tokens)
    if len(counts) < max_loras:
        return None
    if not any((a := adapter(r)) is not None and a not in counts for r in waiting):
        return None
    return min(counts, key=lambda a: (left[a], counts[a]))


class SlotAwareScheduler(Scheduler):
    """vLLM's scheduler with slot-aware admission (the module docstring)."""

    def schedule(self, *args: Any, **kwargs: Any) -> Any:
        held = self._hold_back()
        try:
            return super().schedule(*args, **kwargs)
        finally:
            if held:
                self._restore(held)

    def _hold_back(self) -> list[Any]:
        if self.lora_config is None or self.policy != SchedulingPolicy.FCFS or not self.waiting:
            return []
        drain = adapter_to_drain(self.running, self.waiting, self.lora_config.max_loras)
        if drain is None:
            return []
        held = [r for r in self.waiting if adapter(r) == drain]
        if held:
            self.waiting.remove_requests(held)
        return held

    def _restore(self, held: list[Any]) -> None:
        """Put the held requests back where they were: by arrival, among the queue's own order."""
        rest = list(self.waiting)
        self.waiting.clear()  # type: ignore[attr-defined] # FCFS: a deque
        self.waiting.extend(heapq.merge(rest, held, key=lambda r: r.arrival_time))  # type: ignore[attr-defined]
