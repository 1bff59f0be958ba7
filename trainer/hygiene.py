"""Training-data hygiene: personal data by the payload redactor's patterns, and near-duplicates.

Exact duplicates and prompt leakage are handled in `trainer.data`; this module adds what an exact
hash misses. Near-duplicates are found with MinHash + LSH (datasketch) over word 3-grams of
prompt and completion: rows that differ by a word or two (a ticket number, a greeting) are
reported, within the training split and between a held-out row and the training split.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from registry.redact import count_pii, redact
from trainer.data import Example

NUM_PERM = 128
SHINGLE = 3
EXAMPLES_KEPT = 5
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
        return f"{pii}; {near}"


def _text(ex: Example) -> str:
    return ex.prompt_key + "\n" + ex.completion


def scan_pii(splits: dict[str, list[Example]]) -> tuple[dict[str, int], int]:
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


def near_duplicates(splits: dict[str, list[Example]], threshold: float) -> tuple[int, int, list[list[str]]]:
    """(training pairs, held-out rows near a training row, a few example pairs) by MinHash LSH."""
    from datasketch import MinHash, MinHashLSH

    train = splits["train"]
    signatures = MinHash.bulk([_shingles(_text(ex)) for ex in train], num_perm=NUM_PERM)
    lsh = MinHashLSH(threshold=threshold, num_perm=NUM_PERM)
    for i, sig in enumerate(signatures):
        lsh.insert(i, sig)
    pairs: list[tuple[int, int]] = []
    for i, sig in enumerate(signatures):
        pairs += [(i, j) for j in lsh.query(sig) if j > i and sig.jaccard(signatures[j]) >= threshold]
    examples = [[train[i].source, train[j].source] for i, j in sorted(pairs)[:EXAMPLES_KEPT]]
    heldout = [ex for name in ("val", "test") for ex in splits.get(name, [])]
    near = 0
    for ex, sig in zip(
        heldout, MinHash.bulk([_shingles(_text(e)) for e in heldout], num_perm=NUM_PERM), strict=True
    ):
        hits = [j for j in lsh.query(sig) if sig.jaccard(signatures[j]) >= threshold]
        near += bool(hits)
        if hits and len(examples) < 2 * EXAMPLES_KEPT:
            examples.append([ex.source, train[hits[0]].source])
    return len(pairs), near, examples


def check(
    splits: dict[str, list[Example]], *, redact_pii: bool, threshold: float
) -> tuple[dict[str, list[Example]], HygieneReport]:
    """Scan every split; with `redact_pii` return the splits with personal data masked."""
    pii, pii_rows = scan_pii(splits)
    report = HygieneReport(pii=pii, pii_rows=pii_rows, redacted=redact_pii and bool(pii))
    if threshold > 0 and splits.get("train"):
        report.near_duplicate_threshold = threshold
        report.near_duplicate_pairs, report.heldout_near_train, report.examples = near_duplicates(
            splits, threshold
        )
    if report.redacted:
        splits = {name: [redact_example(ex) for ex in rows] for name, rows in splits.items()}
    return splits, report


def as_record(report: HygieneReport) -> dict[str, Any]:
    return dataclasses.asdict(report)
