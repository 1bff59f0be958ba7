"""The general-capability set: a few hundred short questions with one exact answer each.

Written by the project (`build.py` generates it; CC0, see LICENSE): instruction following,
formatting, arithmetic, reading comprehension and common knowledge, interleaved so that the first
N items cover the five evenly. Scored by exact match after `normalize`, for the base and the
adapter of every training run (`eval.general_max_examples`), by `platform eval REF --general`,
and by the offline gate `general>=baseline-0.02`. A drop against the base is forgetting.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.data import Example
from trainer.distributed import Dist, unshard

GENERAL_FILE = Path(__file__).parent / "general.jsonl"
METRIC = "general"
"""The metric name: overall accuracy; `general.<category>` per category."""
MAX_NEW_TOKENS = 24
"""Answers are a few words: a short generation budget keeps the set cheap."""


@dataclass(frozen=True)
class Item:
    id: str
    category: str
    prompt: str
    answer: str
    case_sensitive: bool

    def example(self) -> Example:
        return Example(((("user", self.prompt),)), self.answer, f"{GENERAL_FILE.name}:{self.id}")


def load_items(limit: int = 0) -> list[Item]:
    """The shipped items in file order (the first `limit` of them; 0: all)."""
    rows = [json.loads(line) for line in GENERAL_FILE.read_text().splitlines() if line.strip()]
    items = [Item(r["id"], r["category"], r["prompt"], r["answer"], bool(r["case_sensitive"])) for r in rows]
    return items[:limit] if limit else items


_FENCE = re.compile(r"^```[\w-]*\n(.*?)\n?```$", re.S)
_WRAP = re.compile(r"^(?:\*\*|__|`{1,3}|[\"'])(.*?)(?:\*\*|__|`{1,3}|[\"'])$", re.S)


def normalize(text: str, case_sensitive: bool = False) -> str:
    """A short answer as compared: a code fence and all but the first line dropped (unless JSON),
    outer quotes/backticks/bold and a final period off, spaces collapsed (none after commas),
    letter case folded unless it is the point; a JSON object re-dumped with sorted keys.

    Hand-written: lm-eval's and SQuAD's normalizers drop punctuation and articles, which would
    pass `14/02/2013` for `14022013` and `rocket_window` for `rocketwindow`, the very formats
    this set checks.
    """
    text = text.strip()
    fenced = _FENCE.match(text)
    text = fenced.group(1).strip() if fenced else text
    text = text.split("\n", 1)[0].strip() if "{" not in text else text
    m = _WRAP.match(text)
    while m:
        text = m.group(1).strip()
        m = _WRAP.match(text)
    text = text.rstrip(".").strip()
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if isinstance(value, dict):
        text = json.dumps(value, sort_keys=True)
    text = re.sub(r"\s*,\s*", ",", " ".join(text.split()))
    return text if case_sensitive else text.casefold()


def correct(prediction: str, item: Item) -> bool:
    return normalize(prediction, item.case_sensitive) == normalize(item.answer, item.case_sensitive)


def score(predictions: list[str], items: list[Item]) -> dict[str, float]:
    """`general` (accuracy over all items) and `general.<category>` per category."""
    hits = [correct(p, it) for p, it in zip(predictions, items, strict=True)]
    out = {METRIC: sum(hits) / len(items)} if items else {}
    for category in dict.fromkeys(it.category for it in items):
        mine = [h for h, it in zip(hits, items, strict=True) if it.category == category]
        out[f"{METRIC}.{category}"] = sum(mine) / len(mine)
    return out


def answers(
    model: Any, tokenizer: Any, items: list[Item], batch_size: int = 16, prompting: Any = None
) -> list[str]:
    """Greedy answers of `model` (as it is: wrap in `base_only` for the base) to the items;
    `prompting` (a `trainer.baseline.Prompting`) rewrites each question first."""
    from trainer.evaluate import generate

    examples = [it.example() for it in items]
    if prompting is not None:
        examples = [prompting.apply(ex) for ex in examples]
    return generate(model, tokenizer, examples, MAX_NEW_TOKENS, batch_size)


def general_base_and_adapter(
    model: Any, tokenizer: Any, items: list[Item], batch_size: int = 16, dist: Dist | None = None
) -> dict[str, dict[str, float]]:
    """Scores of the base (adapter disabled) and the adapter of a PeftModel (`answers`, then `score`).
    In a distributed run each rank answers its share of the items and rank 0 scores them all
    (the other ranks get `{}`), as `trainer.evaluate.evaluate_base_and_adapter` does for rows."""
    from trainer.evaluate import base_only

    dist = dist or Dist()
    mine = dist.shard(items)
    rows = [items[i] for i in mine]

    def shard() -> tuple[list[int], dict[str, list[str]]]:
        with base_only(model):
            base = answers(model, tokenizer, rows, batch_size)
        return mine, {"base": base, "adapter": answers(model, tokenizer, rows, batch_size)}

    parts = dist.gather_results(shard)
    if not dist.is_main:
        return {}
    return {
        side: score(
            unshard([list(zip(idx, out[side], strict=True)) for idx, out in parts], len(items)), items
        )
        for side in ("base", "adapter")
    }


def record(scores: dict[str, dict[str, float]], items: int) -> dict[str, Any] | None:
    """The general set's scores per side (overall and per category) in the lineage; None when skipped."""
    if not scores:
        return None
    return {"items": items, "file": f"trainer/general/{GENERAL_FILE.name}", **scores}
