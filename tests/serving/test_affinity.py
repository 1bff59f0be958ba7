"""The adapter-affinity policy of `--replicas N` (`serving.cluster.affinity.rank`), replayed on
replicas with LRU adapter slots: which requests load a version, and where a burst goes."""

from __future__ import annotations

from collections import OrderedDict

import pytest

pytest.importorskip("ray")

from serving.cluster.affinity import View, home_order, rank


def replay(requests: list[str], homes: dict[str, str], slots: int = 2) -> tuple[int, dict[str, list[str]]]:
    """Sequential requests (every queue empty) on replicas a and b, each an LRU of `slots`
    versions; `homes` names each version's home replica. Loads, and what each replica holds."""
    held: dict[str, OrderedDict[str, None]] = {"a": OrderedDict(), "b": OrderedDict()}
    loads = 0
    for model in requests:
        views = [View(k, 0, frozenset(held[k]), 0 if homes[model] == k else 1) for k in held]
        target = rank(model, views, spill_threshold=4, slots=slots)[0][0]
        if model not in held[target]:
            loads += 1
            if len(held[target]) == slots:
                held[target].popitem(last=False)
        held[target][model] = None
        held[target].move_to_end(model)
    return loads, {k: list(v) for k, v in held.items()}


def test_versions_that_share_a_home_spread_over_free_slots_and_stop_loading() -> None:
    homes = dict.fromkeys(["alpha", "beta", "gamma"], "a")  # one replica is every version's home
    warm, _ = replay(["alpha", "beta", "gamma"], homes)
    loads, held = replay(["alpha", "beta", "gamma"] * 9, homes)
    assert warm == 3
    assert loads == 3, held  # the three first requests only: 3 versions fit 2 x 2 slots


def test_a_version_held_by_a_replica_stays_there_until_its_queue_is_long() -> None:
    calm = [View("a", 2, frozenset({"hot"}), 1), View("b", 0, frozenset(), 0)]
    assert rank("hot", calm, spill_threshold=4, slots=2) == [["a"], ["b"]]
    busy = [View("a", 5, frozenset({"hot"}), 1), View("b", 1, frozenset(), 0)]
    assert rank("hot", busy, spill_threshold=4, slots=2) == [["b"], ["a"]]


def test_a_cold_version_prefers_a_free_slot_unless_that_replica_is_much_busier() -> None:
    full_idle = View("a", 0, frozenset({"x", "y"}), 0)
    assert rank("new", [full_idle, View("b", 3, frozenset({"z"}), 1)], 4, 2)[0] == ["b"]
    assert rank("new", [full_idle, View("b", 4, frozenset({"z"}), 1)], 4, 2)[0] == ["a"]
    both_free = [View("a", 0, frozenset(), 1), View("b", 0, frozenset(), 0)]
    assert rank("new", both_free, 4, 2)[0] == ["b"]  # a tie goes to the version's home


def test_every_router_agrees_on_a_versions_home() -> None:
    replicas = [f"replica-{i}" for i in range(4)]
    homes = {home_order(f"v{i}", replicas)[0] for i in range(64)}
    assert home_order("v1", replicas) == home_order("v1", list(reversed(replicas)))
    assert len(homes) == 4  # versions spread over every replica
