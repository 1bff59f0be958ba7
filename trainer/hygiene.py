"""Training-data hygiene: personal data by the payload redactor's patterns, and near-duplicates.

Exact duplicates and prompt leakage are handled in `trainer.data`; this module adds what an exact
hash misses. Near-duplicates are found with MinHash + LSH (datasketch) over word 3-grams of
prompt and completion: rows that differ by a word or two (a ticket number, a greeting) are
reported, within the training split and between a held-out row and the training split.
MinHash signatures of every row of a multi-million-row split would not fit in memory (about 1 KB a
row with their LSH entries), so at most `data.near_duplicate_max_rows` training rows and as many
held-out rows, spread evenly over each split, are checked; the report says when it sampled.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from registry.redact import count_pii, redact
from trainer.data import Example
from trainer.rowstore import map_rows, spread_sample

Splits = dict[str, Sequence[Example]]

NUM_PERM = 128
SHINGLE = 3
EXAMPLES_KEPT = 5
MAX_ROWS = 20_000
"""Default cap on the rows MinHashed per side (training, held-out): about 60 MB of signatures and LSH."""
_WORD = re.compile(r"\w+")


@dataclass
class HygieneReport:
    """What the scan found: recorded with the version and printed before training."""

    pii: dict[str, int] = field(default_factory=dict)
    """Matches per kind (email, number) over every row of every split."""
    pii_rows: int = 0
    """Rows with at least one match."""
    redacted: bool = False
    """Whether the matches were masked (`data.redact`) before training."""
    near_duplicate_threshold: float = 0.0
    """Estimated Jaccard similarity from which two rows count as near-duplicates (0: not checked)."""
    near_duplicate_pairs: int = 0
    """Pairs of training rows at or above the threshold."""
    heldout_near_train: int = 0
    """Validation/test rows that are near-duplicates of a training row (a softer leakage)."""
    examples: list[list[str]] = field(default_factory=list)
    """A few near-duplicate pairs as `file:line` sources, to look at."""
    near_duplicate_sample: dict[str, list[int]] = field(default_factory=dict)
    """When a split was larger than the cap: rows checked and rows in total, for `train` and `heldout`."""

    def summary(self) -> str:
        """One line for the console."""
        if self.pii:
            kinds = ", ".join(f"{k} {n}" for k, n in sorted(self.pii.items()))
            action = "masked (data.redact=true)" if self.redacted else "set data.redact=true to mask them"
            pii = f"personal data: {kinds} in {self.pii_rows} rows, {action}"
        else:
            pii = "personal data: none found"
        if not self.near_duplicate_threshold:
            return pii
        near = (
            f"near-duplicates (Jaccard >= {self.near_duplicate_threshold}): "
            f"{self.near_duplicate_pairs} training pairs, {self.heldout_near_train} held-out rows near a training row"
        )
        if self.near_duplicate_sample:
            (train, of_train), (held, of_held) = (self.near_duplicate_sample[k] for k in ("train", "heldout"))
            near += (
                f" (in an even sample: {train} of {of_train} training rows, {held} of {of_held} held-out rows; "
                "data.near_duplicate_max_rows)"
            )
        return f"{pii}; {near}"


def _text(ex: Example) -> str:
    return ex.prompt_key + "\n" + ex.completion


def scan_pii(splits: Splits) -> tuple[dict[str, int], int]:
    """Matches per kind and the number of rows with any, over all splits."""
    total: Counter[str] = Counter()
    rows = 0
    for examples in splits.values():
        for ex in examples:
            found = count_pii(_text(ex))
            total.update(found)
            rows += bool(found)
    return dict(total), rows


def redact_example(ex: Example) -> Example:
    """The row with every match masked in its prompt messages and its completion."""
    messages = tuple((role, redact(content)) for role, content in ex.messages)
    return dataclasses.replace(ex, messages=messages, completion=redact(ex.completion))


def _shingles(text: str) -> set[bytes]:
    words = _WORD.findall(text.lower())
    if len(words) < SHINGLE:
        return {" ".join(words).encode()}
    return {" ".join(words[i : i + SHINGLE]).encode() for i in range(len(words) - SHINGLE + 1)}


def near_duplicates(
    splits: Splits, threshold: float, max_rows: int = MAX_ROWS
) -> tuple[int, int, list[list[str]], dict[str, list[int]]]:
    """(training pairs, held-out rows near a training row, a few example pairs, the sample taken if any) by
    MinHash LSH over at most `max_rows` training rows and `max_rows` held-out rows."""
    from datasketch import MinHash, MinHashLSH

    heldout_all = [rows for name in ("val", "test") if (rows := splits.get(name))]
    train = spread_sample(splits["train"], max_rows)
    heldout = [ex for rows in heldout_all for ex in spread_sample(rows, max_rows // len(heldout_all))]
    sample: dict[str, list[int]] = {}
    held_total = sum(len(rows) for rows in heldout_all)
    if len(train) < len(splits["train"]) or len(heldout) < held_total:
        sample = {"train": [len(train), len(splits["train"])], "heldout": [len(heldout), held_total]}
    signatures = MinHash.bulk([_shingles(_text(ex)) for ex in train], num_perm=NUM_PERM)
    lsh = MinHashLSH(threshold=threshold, num_perm=NUM_PERM)
    for i, sig in enumerate(signatures):
        lsh.insert(i, sig)
    pairs: list[tuple[int, int]] = []
    for i, sig in enumerate(signatures):
        pairs += [(i, j) for j in lsh.query(sig) if j > i and sig.jaccard(signatures[j]) >= threshold]
    examples = [[train[i].source, train[j].source] for i, j in sorted(pairs)[:EXAMPLES_KEPT]]
    near = 0
    for ex, sig in zip(
        heldout, MinHash.bulk([_shingles(_text(e)) for e in heldout], num_perm=NUM_PERM), strict=True
    ):
        hits = [j for j in lsh.query(sig) if sig.jaccard(signatures[j]) >= threshold]
        near += bool(hits)
        if hits and len(examples) < 2 * EXAMPLES_KEPT:
            examples.append([ex.source, train[hits[0]].source])
    return len(pairs), near, examples, sample


def check(
    splits: Splits, *, redact_pii: bool, threshold: float, max_rows: int = MAX_ROWS
) -> tuple[Splits, HygieneReport]:
    """Scan every split; with `redact_pii` return the splits with personal data masked (rows on disk stay
    there and are masked as they are read). Near-duplicates over at most `max_rows` rows per side."""
    pii, pii_rows = scan_pii(splits)
    report = HygieneReport(pii=pii, pii_rows=pii_rows, redacted=redact_pii and bool(pii))
    if threshold > 0 and splits.get("train"):
        report.near_duplicate_threshold = threshold
        near = near_duplicates(splits, threshold, max_rows)
        report.near_duplicate_pairs, report.heldout_near_train, report.examples = near[:3]
        report.near_duplicate_sample = near[3]
    if report.redacted:
        splits = {name: map_rows(rows, redact_example) for name, rows in splits.items()}
    return splits, report


def as_record(report: HygieneReport) -> dict[str, Any]:
    return dataclasses.asdict(report)
