"""Adapter-affine request routing for the engine replicas (a Ray Serve `RequestRouter`).

Ray's default multiplexed routing sends a version to a replica that holds it as long as that
replica accepts more requests (`max_ongoing_requests`, here `max_num_seqs`), so a hot adapter
piles up on one replica while the others idle. This router, like Ray Serve LLM's prefix-aware
router, prefers locality until the load is imbalanced:

- a version some replica holds goes to the least loaded holder, unless its queue is
  `spill_threshold` requests longer than the least loaded replica's: then it spills there (which
  loads the version, so a hot adapter ends up on several replicas);
- a version no replica holds (a load either way) goes, among the replicas less than
  `spill_threshold` requests busier than the least loaded one, to one with a free adapter slot
  (a load there evicts nothing), then the least loaded, ties to its home replica (rendezvous
  hashing on the version, the same in every router process). Engines batch the requests they
  run, so a queue one or two longer costs little; an eviction costs a later load;
- a request without a version (the base model, pinned versions) goes to the least loaded one.

What a replica holds is what it reports to Ray (pushed every 0.1 s, then broadcast) joined with
what this router sent it since (an LRU of `slots` versions per replica): a burst of first
requests for different versions sees the loads it caused before the reports catch up.
Queue lengths come from Ray's per-router cache (probed replicas, updated on every send and
completion); the replica Ray finally picks within a rank is the one with the shortest queue
that accepts it.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from ray.serve.request_router import (
    FIFOMixin,
    MultiplexMixin,
    PendingRequest,
    RequestRouter,
    RunningReplica,
)

SPILL_THRESHOLD = 4
"""Default: how many more queued requests a holder may have than the least loaded replica."""


@dataclass(frozen=True)
class View:
    """What the router knows of one replica when it routes one version."""

    key: str
    """The replica's unique id."""
    queue: int
    held: frozenset[str]
    home: int
    """The replica's rank in the version's rendezvous order (0: the version's home)."""


def rank(model_id: str, views: list[View], spill_threshold: int, slots: int) -> list[list[str]]:
    """Ranks of replica keys for a request for `model_id` (the policy in the module docstring)."""
    by_load = sorted(views, key=lambda v: (v.queue, v.home))
    least = by_load[0].queue
    holders = [v for v in by_load if model_id in v.held]
    if holders:
        rest = [v.key for v in by_load if v not in holders]
        if rest and holders[0].queue - least >= spill_threshold:  # imbalanced: spill
            ranks = [rest[:1], [v.key for v in holders], rest[1:]]
        else:
            ranks = [[v.key for v in holders], rest]
    else:
        near = [v for v in views if v.queue - least < spill_threshold]
        cold = sorted(near, key=lambda v: (len(v.held) >= slots, v.queue, v.home))
        ranks = [[cold[0].key], [v.key for v in cold[1:]] + [v.key for v in by_load if v not in near]]
    return [keys for keys in ranks if keys]


def home_order(model_id: str, keys: list[str]) -> list[str]:
    """Replica ids by rendezvous hash of (version, replica): the first is the version's home."""

    def weight(key: str) -> int:
        digest = hashlib.blake2b(f"{model_id}|{key}".encode(), digest_size=8).digest()
        return int.from_bytes(digest)  # not CRC: it is linear

    return sorted(keys, key=weight, reverse=True)


class AdapterAffinityRouter(FIFOMixin, MultiplexMixin, RequestRouter):
    """Holders first, unless they are `spill_threshold` requests busier than the least loaded
    replica; versions no replica holds to a replica with a free slot, then the least loaded."""

    def initialize_state(self, spill_threshold: int = SPILL_THRESHOLD, slots: int = 1, **kwargs: Any) -> None:
        self.spill_threshold = spill_threshold
        self.slots = slots
        self.sent: dict[str, OrderedDict[str, None]] = {}
        """Per replica, the versions this router sent it, most recent last (at most `slots`)."""

    def queue(self, r: RunningReplica) -> int:
        """The cached queue length (0 when unknown: Ray probes the replicas it picks from)."""
        q = self.replica_queue_len_cache.get(r.replica_id)
        return int(q) if q is not None else 0

    def view(self, r: RunningReplica, home: int) -> View:
        key = r.replica_id.unique_id
        held = frozenset(r.multiplexed_model_ids) | self.sent.get(key, {}).keys()
        return View(key, self.queue(r), held, home)

    async def choose_replicas(
        self, candidate_replicas: list[RunningReplica], pending_request: PendingRequest | None = None
    ) -> list[list[RunningReplica]]:
        if pending_request is None:
            return [candidate_replicas]
        pending_request.routing_context.should_backoff = True  # after a pass over every rank
        model_id = pending_request.metadata.multiplexed_model_id
        if not model_id or len(candidate_replicas) < 2:
            return [candidate_replicas]
        by_id = {r.replica_id.unique_id: r for r in candidate_replicas}
        order = {key: i for i, key in enumerate(home_order(model_id, list(by_id)))}
        views = [self.view(r, order[key]) for key, r in by_id.items()]
        ranks = rank(model_id, views, self.spill_threshold, self.slots)
        return [[by_id[key] for key in keys] for keys in ranks]

    def on_request_routed(self, pending_request: PendingRequest, replica_id: Any, result: Any) -> None:
        model_id = pending_request.metadata.multiplexed_model_id
        if not model_id:
            return
        held = self.sent.setdefault(replica_id.unique_id, OrderedDict())
        held[model_id] = None
        held.move_to_end(model_id)
        while len(held) > self.slots:  # the replica's LRU evicted its least recently used
            held.popitem(last=False)
