"""Chat template and completion-only labels.

The prompt is rendered with the base model's chat template and `add_generation_prompt=True`;
the full row adds the assistant turn. Prompt tokens must be a prefix of the full tokens (else
the template rewrites earlier turns and the labels would be wrong); their labels are -100.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from trainer.data import Example
from trainer.errors import DataError

IGNORE = -100


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    truncated: bool
    """The row was longer than max_seq_len and was cut."""
    length: int = 0
    """Tokens of the whole row before any cut."""
    completion_fits: bool = True
    """The completion (with its end-of-turn) alone fits max_seq_len, so a left cut of the prompt keeps it."""


def prompt_ids(tokenizer: Any, example: Example) -> list[int]:
    ids = tokenizer.apply_chat_template(example.prompt_messages, add_generation_prompt=True, tokenize=True)
    return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)


def encode(tokenizer: Any, example: Example, max_seq_len: int) -> Encoded:
    """The row's tokens and completion-only labels, at most max_seq_len long.

    A long row loses the start of its prompt, never the end of its completion; only a completion
    that alone exceeds max_seq_len is cut at its end (`completion_fits` False; training drops such
    rows, see `fit_rows`).
    """
    prompt = prompt_ids(tokenizer, example)
    full_msgs = [*example.prompt_messages, {"role": "assistant", "content": example.completion}]
    full = tokenizer.apply_chat_template(full_msgs, tokenize=True)
    full = list(full["input_ids"] if hasattr(full, "keys") else full)
    if full[: len(prompt)] != prompt:
        raise DataError(
            [
                "the chat template does not render the prompt as a prefix of the full conversation; "
                "completion-only labels are impossible with this template"
            ],
            example.source,
        )
    labels = [IGNORE] * len(prompt) + full[len(prompt) :]
    n = len(full)
    completion_fits = n - len(prompt) <= max_seq_len
    if n <= max_seq_len:
        return Encoded(full, labels, False, n, True)
    if completion_fits:
        return Encoded(full[n - max_seq_len :], labels[n - max_seq_len :], True, n, True)
    return Encoded(full[:max_seq_len], labels[:max_seq_len], True, n, False)


@dataclass
class Fitted:
    """Training rows after the `data.overlong` policy, with what it did."""

    rows: list[Encoded]
    dropped: int
    truncated: int


def fit_rows(
    rows: list[Encoded], examples: Sequence[Example], policy: str, max_seq_len: int, source: str
) -> Fitted:
    """Apply `data.overlong` (drop | truncate | error) to encoded training rows."""
    over = [i for i, r in enumerate(rows) if r.truncated]
    if policy == "error" and over:
        raise DataError(
            [
                f"{examples[i].source}: {rows[i].length} tokens, longer than data.max_seq_len={max_seq_len} "
                "(data.overlong=error; raise data.max_seq_len or set data.overlong=drop or truncate)"
                for i in over
            ],
            source,
        )
    keep = [r for r in rows if not r.truncated or (policy == "truncate" and r.completion_fits)]
    truncated = sum(r.truncated for r in keep)
    return Fitted(keep, len(rows) - len(keep), truncated)


def pack(rows: list[Encoded], max_seq_len: int) -> list[list[Encoded]]:
    """Whole rows grouped into blocks of at most max_seq_len tokens (best fit, longest rows first).

    A block is a list of rows, not one concatenated row: `trainer.packing.PackedCollator`
    concatenates each block with position ids that restart per row, which keeps the rows'
    attention apart.
    """
    blocks: list[list[Encoded]] = []
    free: list[tuple[int, int]] = []  # (room left, block index), sorted: bisect finds the best fit
    for row in sorted(rows, key=lambda r: len(r.input_ids), reverse=True):
        size = len(row.input_ids)
        at = bisect.bisect_left(free, (size, -1))
        if at < len(free):
            room, index = free.pop(at)
        else:
            room, index = max_seq_len, len(blocks)
            blocks.append([])
        blocks[index].append(row)
        bisect.insort(free, (room - size, index))
    return blocks
