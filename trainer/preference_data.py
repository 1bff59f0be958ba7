"""Preference rows for DPO and KTO: read, validate, split.

Two shapes, TRL's own, in plain or conversational form (what `platform data export --pairs` and
`--unpaired` write):
- pairs (DPO): `{"prompt": ..., "chosen": ..., "rejected": ...}`
- unpaired (KTO): `{"prompt": ..., "completion": ..., "label": true|false}`
where a prompt is a string or a list of messages ending with a user turn, and an answer is a
string or a list holding one assistant message. Every bad row is reported with its file and line,
as the SFT reader does; rows are deduplicated and split by a hash of the prompt (the same prompt
never lands in two splits).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.data import Example, clean_text, json_objects, split_of
from trainer.errors import DataError

PREFERENCE_SHAPES = {"pairs": {"prompt", "chosen", "rejected"}, "unpaired": {"prompt", "completion", "label"}}
_ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class PreferenceRow:
    """A prompt with a preferred and a rejected answer (pairs), or one answer and its label (unpaired)."""

    messages: tuple[tuple[str, str], ...]
    chosen: str
    """The preferred answer (pairs), or the answer (unpaired)."""
    rejected: str | None = None
    label: bool | None = None
    source: str = ""

    @property
    def prompt(self) -> list[dict[str, str]]:
        return [{"role": r, "content": c} for r, c in self.messages]

    def as_example(self) -> Example:
        """The prompt and the preferred answer as an SFT row (for the task metrics)."""
        return Example(self.messages, self.chosen, self.source)

    def trl_row(self) -> dict[str, Any]:
        """The row as TRL's conversational preference (or unpaired preference) dataset takes it."""
        if self.rejected is not None:
            return {"prompt": self.prompt, "chosen": _turn(self.chosen), "rejected": _turn(self.rejected)}
        return {"prompt": self.prompt, "completion": _turn(self.chosen), "label": bool(self.label)}

    def digest(self) -> str:
        return hashlib.sha256(
            json.dumps([self.messages, self.chosen, self.rejected, self.label]).encode()
        ).hexdigest()


def _turn(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def _prompt(value: Any, where: str, problems: list[str]) -> tuple[tuple[str, str], ...] | None:
    if isinstance(value, str) and value.strip():
        return (("user", clean_text(value)),)
    if not isinstance(value, list) or not value:
        problems.append(f"{where}: field 'prompt' must be a non-empty string or a list of messages")
        return None
    turns: list[tuple[str, str]] = []
    for i, msg in enumerate(value):
        at = f"{where}: prompt[{i}]"
        if not isinstance(msg, dict) or msg.get("role") not in _ROLES:
            problems.append(f"{at} must be an object with a role of system/user/assistant and a content")
            return None
        content = msg.get("content")
        if not isinstance(content, str) or not content.strip():
            problems.append(f"{at}.content must be a non-empty string")
            return None
        turns.append((msg["role"], clean_text(content)))
    if turns[-1][0] != "user":
        problems.append(f"{where}: the prompt's last message must be a 'user' turn")
        return None
    return tuple(turns)


def _answer(row: dict[str, Any], key: str, where: str, problems: list[str]) -> str | None:
    value = row.get(key)
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict):
        if value[0].get("role") != "assistant":
            problems.append(f"{where}: field {key!r} must hold one 'assistant' message")
            return None
        value = value[0].get("content")
    if not isinstance(value, str) or not value.strip():
        problems.append(f"{where}: field {key!r} must be a non-empty string or one assistant message")
        return None
    return clean_text(value)


def _row(row: dict[str, Any], shape: str, where: str, problems: list[str]) -> PreferenceRow | None:
    before = len(problems)
    messages = _prompt(row.get("prompt"), where, problems)
    if shape == "pairs":
        chosen, rejected = _answer(row, "chosen", where, problems), _answer(row, "rejected", where, problems)
        if len(problems) > before or messages is None or chosen is None or rejected is None:
            return None
        if chosen == rejected:
            problems.append(f"{where}: 'chosen' and 'rejected' are the same answer")
            return None
        return PreferenceRow(messages, chosen, rejected, None, where)
    completion, label = _answer(row, "completion", where, problems), row.get("label")
    if not isinstance(label, bool):
        problems.append(f"{where}: field 'label' must be true or false, got {label!r}")
    if len(problems) > before or messages is None or completion is None:
        return None
    return PreferenceRow(messages, completion, None, bool(label), where)


def read_preferences(path: Path, objective: str) -> list[PreferenceRow]:
    """Read a preference file for `objective` (`dpo` wants pairs, `kto` unpaired rows); raise
    DataError listing every bad row."""
    shape = "pairs" if objective == "dpo" else "unpaired"
    want = PREFERENCE_SHAPES[shape]
    problems: list[str] = []
    rows: list[PreferenceRow] = []
    for _, where, row in json_objects(path, problems):
        if not want <= row.keys():
            problems.append(
                f"{where}: training.objective={objective} reads {shape} rows with fields "
                f"{sorted(want)}, got {sorted(row)}"
                + ("; export them with `platform data export NAME --pairs`" if shape == "pairs" else "")
                + ("; export them with `platform data export NAME --unpaired`" if shape == "unpaired" else "")
            )
            continue
        parsed = _row(row, shape, where, problems)
        if parsed is not None:
            rows.append(parsed)
    if problems:
        raise DataError(problems, str(path))
    if not rows:
        raise DataError(["no rows"], str(path))
    if objective == "kto" and len({r.label for r in rows}) < 2:
        raise DataError(
            ["KTO needs both desirable (label true) and undesirable (label false) rows"], str(path)
        )
    return rows


def split_preferences(
    rows: list[PreferenceRow], val_fraction: float, test_fraction: float
) -> tuple[dict[str, list[PreferenceRow]], int]:
    """Dedup, then split by the prompt's hash bucket; returns the splits and the duplicates dropped."""
    seen: set[str] = set()
    splits: dict[str, list[PreferenceRow]] = {"train": [], "val": [], "test": []}
    for r in rows:
        d = r.digest()
        if d in seen:
            continue
        seen.add(d)
        splits[split_of(Example(r.messages, ""), val_fraction, test_fraction)].append(r)
    return splits, len(rows) - len(seen)
