"""Exceptions raised by the trainer. Messages name the file, line or field at fault."""

from __future__ import annotations


class TrainerError(Exception):
    """Base class of every error the trainer raises."""


class ConfigError(TrainerError):
    """The training config has one or more problems; all of them are listed at once."""

    def __init__(self, problems: list[str], source: str = "config") -> None:
        self.problems = problems
        if len(problems) == 1:
            super().__init__(f"{source}: {problems[0]}")
            return
        super().__init__(
            f"{source} has {len(problems)} problem(s):\n" + "\n".join(f"  - {p}" for p in problems)
        )


class DataError(TrainerError):
    """The dataset is unreadable or has bad rows; every bad row is listed with file and line."""

    def __init__(self, problems: list[str], source: str, total: int | None = None) -> None:
        self.problems = problems
        """The problems kept (a huge file keeps its first ones; `total` counts them all)."""
        self.total = max(total or 0, len(problems))
        shown = problems[:50]
        more = f"\n  ... and {self.total - 50} more" if self.total > 50 else ""
        super().__init__(
            f"{source}: {self.total} bad row(s):\n" + "\n".join(f"  - {p}" for p in shown) + more
        )


class ModelError(TrainerError):
    """The base model or the LoRA setup is unusable (unknown target module, bad dtype, ...)."""


class RankFailedError(TrainerError):
    """Another process of a distributed run failed; this one stops too, and nothing is published."""


class BaselineError(TrainerError):
    """`eval.baseline` or a `base+...` reference is not zero_shot, few_shot, few_shot:K or system:FILE."""
