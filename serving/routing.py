"""Pure A/B choice: a deterministic hash of (route, sticky key) picks a variant by weight.

No shared state: every replica computes the same choice for the same user, and a user keeps
a variant for as long as the weights stand. Without a sticky key the choice is random.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence

from registry.routes import Route, Variant


def unit_hash(route: str, key: str) -> float:
    """A number in [0, 1) fixed by (route, key)."""
    digest = hashlib.sha256(f"{route}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def pick(variants: Sequence[Variant], u: float) -> Variant:
    total = sum(v.weight for v in variants)
    edge = 0.0
    for v in variants:
        edge += v.weight / total
        if u < edge:
            return v
    return [v for v in variants if v.weight > 0][-1]


def choose(route: Route, sticky_key: str | None, rng: random.Random | None = None) -> Variant:
    u = unit_hash(route.name, sticky_key) if sticky_key else (rng or random).random()
    return pick(route.variants, u)


def shadow_sampled(route: Route, request_id: str) -> bool:
    """Whether this request also runs on the shadow variant (a hash, so replays agree)."""
    return bool(route.shadow) and unit_hash(route.name + "/shadow", request_id) < route.shadow_share
