"""Adapter-affine request routing for the engine replicas (a Ray Serve `RequestRouter`).

Ray's default multiplexed routing sends a version to a replica that holds it as long as that
replica accepts more requests (`max_ongoing_requests`, here `max_num_seqs`), so a hot adapter
piles up on one replica while the others idle. This router, like Ray Serve LLM's prefix-aware
router, prefers locality until the load is imbalanced:

- a version some replica holds goes to the least loaded holder, unless its queue is
  `spill_threshold` requests longer than the least loaded replica's: then it spills there (which
  loads the version, so a hot adapter ends up on several replicas);
- a version no replica holds (a load either way) goes to the least loaded replica, ties to its
  home replica (rendezvous hashing on the version, the same in every router process);
- a request without a version (the base model, pinned versions) goes to the least loaded one.

Queue lengths come from Ray's per-router cache (probed replicas, updated on every send); the
replica Ray finally picks within a rank is the one with the shortest queue that accepts it.
"""

from __future__ import annotations

import hashlib
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


def home_order(model_id: str, replicas: list[RunningReplica]) -> list[RunningReplica]:
    """Replicas by rendezvous hash of (version, replica): the first is the version's home."""

    def weight(r: RunningReplica) -> int:
        key = f"{model_id}|{r.replica_id.unique_id}".encode()
        return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest())  # not CRC: it is linear

    return sorted(replicas, key=weight, reverse=True)


class AdapterAffinityRouter(FIFOMixin, MultiplexMixin, RequestRouter):
    """Holders first, unless they are `spill_threshold` requests busier than the least loaded
    replica; versions no replica holds to the least loaded one."""

    def initialize_state(self, spill_threshold: int = SPILL_THRESHOLD, **kwargs: Any) -> None:
        self.spill_threshold = spill_threshold

    def queue(self, r: RunningReplica) -> int:
        """The cached queue length (0 when unknown: Ray probes the replicas it picks from)."""
        q = self.replica_queue_len_cache.get(r.replica_id)
        return int(q) if q is not None else 0

    async def choose_replicas(
        self, candidate_replicas: list[RunningReplica], pending_request: PendingRequest | None = None
    ) -> list[list[RunningReplica]]:
        if pending_request is None:
            return [candidate_replicas]
        pending_request.routing_context.should_backoff = True  # after a pass over every rank
        model_id = pending_request.metadata.multiplexed_model_id
        if not model_id or len(candidate_replicas) < 2:
            return [candidate_replicas]
        by_load = sorted(candidate_replicas, key=self.queue)
        holders = [r for r in by_load if model_id in r.multiplexed_model_ids]
        if not holders:  # a load either way: the least loaded replica, ties to the version's home
            home = {r.replica_id: i for i, r in enumerate(home_order(model_id, candidate_replicas))}
            cold = sorted(candidate_replicas, key=lambda r: (self.queue(r), home[r.replica_id]))
            return [cold[:1], cold[1:]]
        rest = [r for r in by_load if r not in holders]
        if rest and self.queue(holders[0]) - self.queue(by_load[0]) >= self.spill_threshold:
            return [by_load[:1], holders, rest]  # imbalanced: spill to the least loaded
        return [holders, rest]
