"""The prompted baseline: the base model given a few training examples (or a system prompt).

`eval.baseline` says how: `zero_shot` (only the bare base), `few_shot` (K chosen to fit
`data.max_seq_len`), `few_shot:K`, or `system:FILE`. The shots are earlier turns of the chat
(user prompt, assistant answer), drawn from the training split with the run's seed, so the
held-out rows never appear in a prompt. If fine-tuning does not beat this clearly, a prompt may
do the adapter's job without its upkeep; `verdict` says so.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainer.data import Example
from trainer.errors import BaselineError

if TYPE_CHECKING:
    from trainer.evaluate import EvalResult

MAX_AUTO_SHOTS = 8
"""`few_shot` without K uses at most this many examples, fewer if they do not fit."""
KEY = "prompted"
"""The prompted base's key in the run's metrics and predictions (`prompted_prediction`)."""


@dataclass(frozen=True)
class Baseline:
    mode: str
    """`zero_shot`, `few_shot` or `system`."""
    shots: int | None = None
    """K for `few_shot:K`; None: as many as fit (at most MAX_AUTO_SHOTS)."""
    system_file: str | None = None


def parse_baseline(text: str) -> Baseline:
    """`zero_shot`, `few_shot`, `few_shot:K` (1 <= K <= 64) or `system:FILE` (a readable text file)."""
    mode, _, arg = text.strip().partition(":")
    if mode == "zero_shot" and not arg:
        return Baseline("zero_shot")
    if mode == "few_shot":
        if not arg:
            return Baseline("few_shot")
        if arg.isdigit() and 1 <= int(arg) <= 64:
            return Baseline("few_shot", shots=int(arg))
        raise BaselineError(f"few_shot:{arg}: K must be a whole number from 1 to 64")
    if mode == "system" and arg:
        if not Path(arg).expanduser().is_file():
            raise BaselineError(f"system:{arg}: no such file (a text file with the system prompt)")
        return Baseline("system", system_file=arg)
    raise BaselineError(f"{text!r}: expected zero_shot, few_shot, few_shot:K or system:FILE")


@dataclass
class Prompting:
    """What the prompted baseline used, recorded in the run's lineage (`baseline`)."""

    setting: str
    label: str
    """The column name shown for it, e.g. `base+few_shot:4`."""
    shots: list[Example] = field(default_factory=list)
    system: str | None = None
    note: str = ""

    def apply(self, example: Example) -> Example:
        """The example with the system prompt, or the shots as earlier turns, before its own turns."""
        own = list(example.messages)
        system = [m for m in own if m[0] == "system"]
        rest = [m for m in own if m[0] != "system"]
        if self.system is not None:
            text = "\n\n".join([self.system, *(c for _, c in system)])
            return Example((("system", text), *rest), example.completion, example.source)
        turns: list[tuple[str, str]] = []
        for shot in self.shots:
            turns += [m for m in shot.messages if m[0] != "system"]
            turns.append(("assistant", shot.completion))
        return Example((*system, *turns, *rest), example.completion, example.source)

    def record(self) -> dict[str, object]:
        return {
            "setting": self.setting,
            "label": self.label,
            "k": len(self.shots),
            "shots": [s.source for s in self.shots],
            "system_file": self.setting.partition(":")[2] if self.system is not None else None,
            "note": self.note,
        }


def prompting(
    baseline: Baseline, train: Sequence[Example], lengths: list[int], budget: int, seed: int
) -> Prompting | None:
    """The prompting to evaluate, or None for zero_shot (the bare base is always evaluated).

    `lengths` are the training rows' token counts; `budget` the tokens the shots may take (the
    context less the longest evaluated prompt and the answer). `few_shot` adds shorter-than-median
    training rows, in a seeded order, while they fit (at most MAX_AUTO_SHOTS); `few_shot:K` takes
    K of them whether they fit or not (the prompt's start is cut like any long row's).
    """
    if baseline.mode == "zero_shot":
        return None
    if baseline.mode == "system":
        assert baseline.system_file is not None
        text = Path(baseline.system_file).expanduser().read_text().strip()
        return Prompting(f"system:{baseline.system_file}", "base+system", system=text)
    median = sorted(lengths)[len(lengths) // 2] if lengths else 0
    pool = [i for i, n in enumerate(lengths) if n <= median]
    random.Random(seed).shuffle(pool)
    if baseline.shots is not None:
        chosen = (pool + [i for i in range(len(train)) if i not in set(pool)])[: baseline.shots]
        note = "" if sum(lengths[i] for i in chosen) <= budget else "the shots do not fit: prompts are cut"
        setting = f"few_shot:{baseline.shots}"
    else:
        chosen, used = [], 0
        for i in pool[:MAX_AUTO_SHOTS]:
            if used + lengths[i] > budget:
                break
            chosen.append(i)
            used += lengths[i]
        note = f"K={len(chosen)} chosen to fit {budget} tokens of context"
        setting = "few_shot"
    if not chosen:
        return Prompting(setting, "base+few_shot:0", note=f"no training example fits: {note}")
    return Prompting(setting, f"base+few_shot:{len(chosen)}", [train[i] for i in chosen], note=note)


def record(p: Prompting | None, results: dict[str, EvalResult], rows: list[Example]) -> dict[str, Any] | None:
    """The prompted baseline in the lineage: its setting and shots, and, when it was evaluated
    (`KEY` in `results`), the paired comparisons with the adapter on `rows` and the verdict."""
    from trainer.compare import paired_comparisons, verdict

    if p is None:
        return None
    out: dict[str, Any] = p.record()
    if KEY in results:
        comparisons = paired_comparisons({KEY: results[KEY], "adapter": results["adapter"]}, rows)
        out["comparisons"] = [asdict(c) for c in comparisons]
        out["verdict"] = verdict(comparisons, "adapter", KEY, p.label)
    return out
