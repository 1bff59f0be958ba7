"""The pure A/B choice: the split follows the weights, users stick, replicas agree."""

from __future__ import annotations

import math
import random

from registry.routes import Route, Variant
from serving.routing import choose, shadow_sampled

ROUTE = Route("support", (Variant("support@3", 90), Variant("support@4", 10)))


def test_split_over_10000_users_matches_the_weights() -> None:
    n = 10_000
    hits = sum(choose(ROUTE, f"user-{i}").ref == "support@4" for i in range(n))
    sigma = math.sqrt(n * 0.1 * 0.9)
    assert abs(hits - n * 0.1) < 4 * sigma  # 1000 +- 120


def test_three_way_split_and_zero_weights() -> None:
    route = Route("r", (Variant("a@1", 1), Variant("b@1", 0), Variant("c@1", 3)))
    counts = {"a@1": 0, "b@1": 0, "c@1": 0}
    for i in range(8000):
        counts[choose(route, str(i)).ref] += 1
    assert counts["b@1"] == 0
    assert abs(counts["a@1"] / 8000 - 0.25) < 0.02 and abs(counts["c@1"] / 8000 - 0.75) < 0.02


def test_a_user_keeps_the_variant_and_replicas_agree() -> None:
    first = {u: choose(ROUTE, u).ref for u in (f"u{i}" for i in range(500))}
    again = {u: choose(Route("support", ROUTE.variants), u).ref for u in first}  # a "replica": fresh objects
    assert first == again


def test_without_a_key_the_choice_is_random() -> None:
    rng = random.Random(0)
    refs = {choose(ROUTE, None, rng).ref for _ in range(200)}
    assert refs == {"support@3", "support@4"}


def test_shadow_sampling_follows_the_share() -> None:
    route = Route("s", ROUTE.variants, shadow="support@5", shadow_share=0.2)
    share = sum(shadow_sampled(route, f"req-{i}") for i in range(5000)) / 5000
    assert abs(share - 0.2) < 0.03
