"""Slot-aware admission: a request whose adapter needs a slot is not starved by the running ones.

vLLM runs at most `max_loras` adapters in a step. Its scheduler skips a waiting request whose
adapter is not among the running ones while all slots are taken, and goes on admitting later
requests for the running adapters, so a slot frees only when one of them happens to have no
request left: while those adapters have steady traffic, the request waits behind every later one.

Drain: `SlotAwareScheduler` holds back, while such a request waits, the waiting requests of one
running adapter: the one whose running requests end soonest (at most their `max_tokens`; ties: the
one with fewer requests), so it drains and its slot goes to the request that waited. Requests for
the other running adapters and for the base model are admitted as before; held requests keep their
place in the queue.

Slot turns: a drain still makes the request wait as long as the running requests last. So once an
adapter has waited `turn_s` for a slot (`additional_config["lora_slot_turn_s"]`, default TURN_S;
None: off) and no slot drains within DRAIN_STEPS steps, the running requests of one adapter that
has held its slot at least `turn_s` are paused: they leave the running list but keep their KV
cache (nothing is recomputed; on the CPU that cache is host memory anyway), and the adapter that
waited takes the slot. A paused adapter waits for a slot like any other and resumes where it stopped. The adapter
paused is one whose requests all have their first token, the one with the fewest running requests
(the step loses the fewest), then the most tokens left (one about to end frees its slot anyway).
So no request waits for its first token much longer than `turn_s` however many adapters are asked
for at once, and the step keeps its size: a pause moves waiting from before a request's first
token to between its tokens.

The engine core imports it by name (vLLM's `scheduler_cls`); used with the CPU platform's
synchronous scheduler.
"""

from __future__ import annotations

import heapq
import time
from collections import Counter
from collections.abc import Iterable
from typing import Any

from vllm.v1.core.sched.request_queue import SchedulingPolicy
from vllm.v1.core.sched.scheduler import Scheduler

TURN_S = 0.5
"""How long an adapter waits for a slot before a running adapter is paused for it (seconds)."""
DRAIN_STEPS = 2
"""Once a turn is up, no adapter is paused if a slot frees within this many steps anyway."""


def adapter(request: Any) -> int | None:
    lora = request.lora_request
    return lora.lora_int_id if lora is not None and lora.lora_int_id > 0 else None


def tokens_left(running: Iterable[Any]) -> dict[int, int]:
    """Per running adapter: the most tokens one of its running requests may still add."""
    left: dict[int, int] = {}
    for r in running:
        if (a := adapter(r)) is not None:
            left[a] = max(left.get(a, 0), r.max_tokens - r.num_output_tokens)
    return left


def adapter_to_drain(running: Iterable[Any], waiting: Iterable[Any], max_loras: int) -> int | None:
    """The running adapter whose waiting requests to hold back, or None when no waiting request
    needs a slot that is taken."""
    running = list(running)
    counts = Counter(a for r in running if (a := adapter(r)) is not None)
    if len(counts) < max_loras:
        return None
    if not any((a := adapter(r)) is not None and a not in counts for r in waiting):
        return None
    left = tokens_left(running)
    return min(counts, key=lambda a: (left[a], counts[a]))


def adapter_to_pause(running: Iterable[Any], held_since: dict[int, float], before: float) -> int | None:
    """The running adapter to pause for one that waited: among those holding their slot since
    `before` or earlier and whose requests all have their first token, the fewest running
    requests, then the most tokens left; None if there is none."""
    running = list(running)
    counts = Counter(a for r in running if (a := adapter(r)) is not None)
    starting = {a for r in running if (a := adapter(r)) is not None and r.num_output_tokens == 0}
    left = tokens_left(running)
    candidates = [a for a in counts if held_since.get(a, before) <= before and a not in starting]
    return min(candidates, key=lambda a: (counts[a], -left[a])) if candidates else None


class SlotAwareScheduler(Scheduler):
    """vLLM's scheduler with slot-aware admission and slot turns (the module docstring).

    A paused adapter's requests stay in `running` (so aborts, request counts and metrics need
    nothing of ours); each step sets them aside while vLLM schedules."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        extra = self.vllm_config.additional_config
        self.turn_s: float | None = (
            extra.get("lora_slot_turn_s", TURN_S) if isinstance(extra, dict) else TURN_S
        )
        self.clock = time.time  # the clock of requests' arrival_time
        self.paused: dict[int, float] = {}
        """per paused adapter: since when"""
        self.held_since: dict[int, float] = {}
        """per running adapter: since when it holds its slot"""

    def schedule(self, *args: Any, **kwargs: Any) -> Any:
        now = self.clock()
        if self.held_since:  # an adapter whose requests all ended since the last step let its slot go
            active = self._active()
            self.held_since = {a: since for a, since in self.held_since.items() if a in active}
        if self.lora_config is not None and self.policy == SchedulingPolicy.FCFS:
            self._take_turns(now, self.lora_config.max_loras)
        aside = self._set_aside()
        held = self._hold_back()
        try:
            out = super().schedule(*args, **kwargs)
        finally:
            if held:
                self._restore(held)
            self.running.extend(aside)
        if self.lora_config is not None:
            self.held_since = {a: self.held_since.get(a, now) for a in self._active()}
        return out

    def _live(self) -> list[Any]:
        """The running requests that are not paused."""
        return [r for r in self.running if adapter(r) not in self.paused] if self.paused else self.running

    def _active(self) -> set[int]:
        return {a for r in self._live() if (a := adapter(r)) is not None}

    def _set_aside(self) -> list[Any]:
        """Take the paused requests out of `running` for this step."""
        if not self.paused:
            return []
        aside = [r for r in self.running if adapter(r) in self.paused]
        self.running = self._live()
        return aside

    def _take_turns(self, now: float, max_loras: int) -> None:
        """Resume paused adapters into free slots (the longest waiting first, beside the waiting
        requests that need one), and pause one running adapter for the adapter that has waited
        longest once it has waited `turn_s`."""
        if self.turn_s is None and not self.paused:
            return
        requests = Counter(adapter(r) for r in self.running)
        self.paused = {a: since for a, since in self.paused.items() if requests[a]}  # all aborted: gone
        live = self._live()
        active = {a for r in live if (a := adapter(r)) is not None}
        contenders = dict(self.paused)
        for r in self.waiting:
            if (a := adapter(r)) is not None and a not in active and a not in contenders:
                contenders[a] = r.arrival_time
        # nothing running (KV cache preemptions): paused adapters first, their blocks are held
        order = sorted(contenders, key=lambda a: (bool(live) or a not in self.paused, contenders[a]))
        free, n_live = max_loras - len(active), len(live)
        while order and free > 0:
            n_live += self._resume(order.pop(0), now, n_live, requests)  # a waiting one: vLLM admits it
            free -= 1
        if not order or self.turn_s is None or now - contenders[order[0]] < self.turn_s:
            return
        live = self._live()
        left = tokens_left(live)
        if left and min(left.values()) <= DRAIN_STEPS:
            return  # a slot drains within a step or two anyway
        victim = adapter_to_pause(live, self.held_since, now - self.turn_s)
        if victim is None:
            return
        after = len(live) - requests[victim]
        if order[0] in self.paused and after + requests[order[0]] > self.max_num_running_reqs:
            return
        self.paused[victim] = now
        self.held_since.pop(victim, None)
        self._resume(order[0], now, after, requests)

    def _resume(self, lora_id: int, now: float, live: int, requests: Counter[int | None]) -> int:
        """Resume a paused adapter if its requests fit beside the `live` ones under `max_num_seqs`;
        returns how many requests it resumed."""
        if lora_id not in self.paused or live + requests[lora_id] > self.max_num_running_reqs:
            return 0
        del self.paused[lora_id]
        self.held_since[lora_id] = now
        return requests[lora_id]

    def _hold_back(self) -> list[Any]:
        """Take out of this step's admission the waiting requests of the adapter to drain and of
        paused adapters (those run when their adapter resumes, not in its place)."""
        if self.lora_config is None or self.policy != SchedulingPolicy.FCFS or not self.waiting:
            return []
        drain = adapter_to_drain(self.running, self.waiting, self.lora_config.max_loras)
        if drain is None and not self.paused:
            return []
        held = [r for r in self.waiting if (a := adapter(r)) is not None and (a == drain or a in self.paused)]
        if held:
            self.waiting.remove_requests(held)
        return held

    def _restore(self, held: list[Any]) -> None:
        """Put the held requests back where they were: by arrival, among the queue's own order."""
        rest = list(self.waiting)
        self.waiting.clear()  # type: ignore[attr-defined] # FCFS: a deque
        self.waiting.extend(heapq.merge(rest, held, key=lambda r: r.arrival_time))  # type: ignore[attr-defined]
