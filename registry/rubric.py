"""Review rubrics: criteria rated on a scale for both answers, plus an overall preference (A/B/tie).

A rubric is YAML (`registry/rubrics/default.yaml` ships):

    criteria:
      - name: correctness
        scale: 1-5            # or [1, 5]; digits 0-9, so each point has a key
        description: Is the answer right?
    preference:
      description: Which answer would you rather send?

The rubric is copied into the review set when it is created, so later edits of the file change
nothing for reviews under way.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from registry.errors import RegistryError

DEFAULT_RUBRIC = Path(__file__).parent / "rubrics" / "default.yaml"
PREFERENCES = ("a", "b", "tie")
_SCALE = re.compile(r"^\s*(\d+)\s*-\s*(\d+)\s*$")
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


class RubricError(RegistryError):
    """A rubric file is not valid YAML or lacks or misstates a field (the message names both)."""


@dataclass(frozen=True)
class Criterion:
    name: str
    low: int
    high: int
    description: str

    @property
    def points(self) -> list[int]:
        return list(range(self.low, self.high + 1))


@dataclass(frozen=True)
class Rubric:
    criteria: tuple[Criterion, ...]
    preference: str
    """What the overall preference asks."""

    def criterion(self, name: str) -> Criterion | None:
        return next((c for c in self.criteria if c.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        return {"criteria": [asdict(c) for c in self.criteria], "preference": self.preference}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Rubric:
        return cls(tuple(Criterion(**c) for c in d["criteria"]), d["preference"])


def load_rubric(path: Path | None = None) -> Rubric:
    """The rubric in `path` (default: the shipped one); RubricError names the file and the field."""
    path = path or DEFAULT_RUBRIC
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise RubricError(f"{path}: cannot read it: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark is not None else ""
        raise RubricError(f"{path}: invalid YAML{line}: {getattr(exc, 'problem', exc)}") from None
    return parse_rubric(data, str(path))


def parse_rubric(data: Any, where: str) -> Rubric:
    if not isinstance(data, dict):
        raise RubricError(f"{where}: expected a mapping with `criteria` and `preference`")
    unknown = set(data) - {"criteria", "preference"}
    if unknown:
        raise RubricError(f"{where}: unknown field {sorted(unknown)[0]!r} (fields: criteria, preference)")
    items = data.get("criteria")
    if not isinstance(items, list) or not items:
        raise RubricError(f"{where}: criteria: give a list of criteria (name, scale, description)")
    criteria = [_criterion(c, f"{where}: criteria[{i}]") for i, c in enumerate(items)]
    names = [c.name for c in criteria]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise RubricError(f"{where}: criteria[{i}].name: {name!r} appears twice")
    pref = data.get("preference") or {}
    if not isinstance(pref, dict) or not isinstance(pref.get("description", ""), str):
        raise RubricError(f"{where}: preference: expected a mapping with a description")
    text = pref.get("description") or "Overall, which answer is better? A, B or tie."
    return Rubric(tuple(criteria), text)


def _criterion(c: Any, where: str) -> Criterion:
    if not isinstance(c, dict):
        raise RubricError(f"{where}: expected a mapping with name, scale and description")
    name = c.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise RubricError(f"{where}.name: {name!r} is not a name (lowercase letters, digits, _; up to 32)")
    low, high = _scale(c.get("scale"), f"{where}.scale")
    description = c.get("description")
    if not isinstance(description, str) or not description.strip():
        raise RubricError(f"{where}.description: say what reviewers judge (a non-empty text)")
    return Criterion(name, low, high, description.strip())


def _scale(value: Any, where: str) -> tuple[int, int]:
    if isinstance(value, str) and _SCALE.match(value):
        m = _SCALE.match(value)
        assert m is not None
        low, high = int(m.group(1)), int(m.group(2))
    elif isinstance(value, list) and len(value) == 2 and all(type(v) is int for v in value):
        low, high = value
    else:
        raise RubricError(f"{where}: {value!r} is not a scale: write 1-5 or [1, 5]")
    if not 0 <= low < high <= 9:
        raise RubricError(f"{where}: {value!r}: the scale must rise within 0-9 (one key per point)")
    return low, high
