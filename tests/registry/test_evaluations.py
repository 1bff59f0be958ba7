"""Evaluations recorded after a push (e.g. lm-eval runs): kept per version on both catalog backends,
shown in the model card's "Evaluations" section."""

from __future__ import annotations

from registry.card import evaluation_lines, with_records
from registry.store import Registry


def record(score: float) -> dict[str, object]:
    return {
        "harness_version": "0.4.13",
        "mode": "in-process",
        "results": {"support_local": {"exact_match": score}},
        "stderr": {"support_local": {"exact_match": 0.125}},
        "samples": {"support_local": 4},
    }


def test_evaluations_are_kept_per_version_in_order(registry_location: str) -> None:
    store = Registry(registry_location).evaluations()
    first = store.add("support", 3, "lm-eval", record(0.25), now=100.0)
    second = store.add("support", 3, "lm-eval", record(0.5), now=200.0)
    store.add("support", 4, "lm-eval", record(1.0), now=150.0)
    stored = store.for_version("support", 3)
    assert [e["id"] for e in stored] == [first, second]
    assert [e["results"]["support_local"]["exact_match"] for e in stored] == [0.25, 0.5]
    assert store.for_version("other", 3) == []

    lines = evaluation_lines(stored)
    assert lines[0].startswith(
        "support_local: exact_match 0.2500 (±0.1250) on 4 samples (lm-eval 0.4.13, in-process"
    )
    card = with_records("# support@3\n", [], [], stored)
    assert card.count("- support_local: exact_match") == 2 and "## Evaluations" in card
