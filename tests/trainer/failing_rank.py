"""A `platform train` entry for torchrun in which rank 1 fails after its share of the evaluation.

It fails late on purpose: after its evaluation rank 1 waits (bounded) until a version shows up in
the registry given by FAILING_RANK_REGISTRY and then raises. A trainer that publishes before every
rank has come through publishes in that wait; one that waits for every rank publishes nothing.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any

from testkit.servers import wait_until

WAIT_S = 15.0
"""How long rank 1 waits for a version before it fails anyway."""


def version_published(root: str) -> bool:
    from registry.store import Registry

    registry = Registry(root)
    try:
        return bool(registry.list_versions())
    finally:
        registry.close()


def fail_rank_one_after_evaluation() -> None:
    from trainer.recipe import LoRARecipe

    evaluate = LoRARecipe.evaluate

    def evaluate_then_fail(self: LoRARecipe) -> Any:
        evaluate(self)
        with contextlib.suppress(AssertionError):  # no version within WAIT_S: fail anyway
            wait_until(lambda: version_published(os.environ["FAILING_RANK_REGISTRY"]), WAIT_S)
        raise RuntimeError("rank 1 failed after its evaluation (tests/trainer/failing_rank.py)")

    LoRARecipe.evaluate = evaluate_then_fail  # type: ignore[method-assign]


if __name__ == "__main__":
    if os.environ.get("RANK") == "1":
        fail_rank_one_after_evaluation()
    from cli.main import cli

    cli(sys.argv[1:], prog_name="platform")
