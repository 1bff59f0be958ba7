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

Bounded slot wait: when more adapters are asked for at once than there are slots, a slot frees
only when one running adapter has no request left, so a request can wait for a slot as long as a
request lasts. Once the first request that needs a slot has waited `slot_wait_s`
(`additional_config["lora_slot_wait_s"]`, default SLOT_WAIT_S; None: never), the scheduler preempts
the running requests of one adapter (vLLM's own preemption: they go back to the queue and recompute
their KV cache when they are admitted again) and that request takes the slot in the same step. The
adapter preempted is one whose requests have all run at least `slot_wait_s` since they were
admitted (each gets its turn), the one with fewest running requests, then most tokens left.
"""

from __future__ import annotations

import heapq
import time
from collections import Counter
from collections.abc import Iterable
from typing import Any

from vllm.v1.core.sched.request_queue import SchedulingPolicy
from vllm.v1.core.sched.scheduler import Scheduler
from vllm.v1.request import RequestStatus

SLOT_WAIT_S = 0.5


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


def adapter_to_preempt(
    running: Iterable[Any], admitted: dict[str, float], max_loras: int, since: float
) -> int | None:
    """The running adapter whose requests to preempt so that a waiting request gets its slot: only
    when all slots are taken, among the adapters all of whose requests were admitted before `since`;
    the fewest requests, then the most tokens left."""
    counts: Counter[int] = Counter()
    left: Counter[int] = Counter()
    recent: set[int] = set()
    for r in running:
        if (a := adapter(r)) is None:
            continue
        counts[a] += 1
        left[a] += r.max_tokens - r.num_output_tokens
        if admitted.get(r.request_id, since) > since:
            recent.add(a)
    if len(counts) < max_loras:
        return None
    candidates = [a for a in counts if a not in recent]
    return min(candidates, key=lambda a: (counts[a], -left[a])) if candidates else None


class SlotAwareScheduler(Scheduler):
    """vLLM's scheduler with slot-aware admission and a bounded slot wait (the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        extra = self.vllm_config.additional_config
        self.slot_wait_s: float | None = (
            extra.get("lora_slot_wait_s", SLOT_WAIT_S) if isinstance(extra, dict) else SLOT_WAIT_S
        )
        self.clock = time.time  # the clock of requests' arrival_time
        self.admitted: dict[str, float] = {}
        """per running request: when it was last admitted"""
        self.waiting_since: dict[str, float] = {}
        """per preempted request: when it went back to the queue"""

    def schedule(self, *args: Any, **kwargs: Any) -> Any:
        now = self.clock()
        held = self._preempt_for_slot(now) + self._hold_back()
        try:
            out = super().schedule(*args, **kwargs)
        finally:
            if held:
                self._restore(held)
        for r in (*out.scheduled_new_reqs, *getattr(out.scheduled_cached_reqs, "resumed_req_ids", ())):
            req_id = getattr(r, "req_id", r)
            self.admitted[req_id] = now
            self.waiting_since.pop(req_id, None)
        if len(self.admitted) > 4 * self.max_num_running_reqs:  # forget requests that have ended
            live = {r.request_id for r in self.running} | {r.request_id for r in self.waiting}
            self.admitted = {k: v for k, v in self.admitted.items() if k in live}
            self.waiting_since = {k: v for k, v in self.waiting_since.items() if k in live}
        return out

    def _preempt_for_slot(self, now: float) -> list[Any]:
        """Preempt one adapter's requests when the first request that needs a slot has waited
        `slot_wait_s`; returns them, to keep out of this step's admission (the slot is the waiting
        request's)."""
        if self.slot_wait_s is None or self.lora_config is None or self.policy != SchedulingPolicy.FCFS:
            return []
        active = {a for r in self.running if (a := adapter(r)) is not None}
        if len(active) < self.lora_config.max_loras:
            return []
        first = next((r for r in self.waiting if (a := adapter(r)) is not None and a not in active), None)
        if (
            first is None
            or now - self.waiting_since.get(first.request_id, first.arrival_time) < self.slot_wait_s
        ):
            return []
        victim = adapter_to_preempt(
            self.running, self.admitted, self.lora_config.max_loras, now - self.slot_wait_s
        )
        if victim is None:
            return []
        preempted = [r for r in self.running if adapter(r) == victim and r.status == RequestStatus.RUNNING]
        for r in preempted:
            self.running.remove(r)
            self._preempt_request(r, time.monotonic())
            self.waiting_since[r.request_id] = now
        self.waiting.remove_requests(preempted)
        return preempted

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
