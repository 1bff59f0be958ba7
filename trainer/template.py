"""Chat template and completion-only labels.

The prompt is rendered with the base model's chat template and `add_generation_prompt=True`;
the full row adds the assistant turn. Prompt tokens must be a prefix of the full tokens (else
the template rewrites earlier turns and the labels would be wrong); their labels are -100.
"""

from __future__ import annotations

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


def prompt_ids(tokenizer: Any, example: Example) -> list[int]:
    ids = tokenizer.apply_chat_template(example.prompt_messages, add_generation_prompt=True, tokenize=True)
    return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)


def encode(tokenizer: Any, example: Example, max_seq_len: int) -> Encoded:
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
    truncated = len(full) > max_seq_len
    return Encoded(full[:max_seq_len], labels[:max_seq_len], truncated)


def pack(rows: list[Encoded], max_seq_len: int) -> list[Encoded]:
    """Greedy packing of whole rows into blocks of at most max_seq_len tokens."""
    out: list[Encoded] = []
    ids: list[int] = []
    labels: list[int] = []
    for row in rows:
        if ids and len(ids) + len(row.input_ids) > max_seq_len:
            out.append(Encoded(ids, labels, False))
            ids, labels = [], []
        ids = ids + row.input_ids
        labels = labels + row.labels
    if ids:
        out.append(Encoded(ids, labels, False))
    return out
