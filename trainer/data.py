"""Data: JSONL in three shapes -> validated, cleaned, deduplicated, split, leakage-checked rows.

Shapes (one per file; mixing them is an error, not a silent union schema):
- alpaca: {"instruction", "input"?, "output"}
- prompt/completion: {"prompt", "completion"}
- chat: {"messages": [{"role": "system"|"user"|"assistant", "content"}...]}, last turn assistant.

Every row becomes an `Example`: chat messages for the prompt plus the completion text. The
split is by a hash bucket of the normalized prompt, so it is stable under reordering and a
prompt never lands in two splits.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer.errors import DataError

Message = dict[str, str]
SHAPES = {
    "alpaca": {"instruction", "output"},
    "prompt_completion": {"prompt", "completion"},
    "chat": {"messages"},
}
_ROLES = {"system", "user", "assistant"}


@dataclass(frozen=True)
class Example:
    """One training row: prompt messages (ending with a user turn) and the target completion."""

    messages: tuple[tuple[str, str], ...]
    completion: str
    source: str = ""
    """`file:line` the row came from."""

    @property
    def prompt_messages(self) -> list[Message]:
        return [{"role": r, "content": c} for r, c in self.messages]

    @property
    def prompt_key(self) -> str:
        return "\n".join(f"{r}:{c}" for r, c in self.messages)

    def digest(self) -> str:
        return hashlib.sha256((self.prompt_key + "\x00" + self.completion).encode()).hexdigest()


@dataclass
class DataReport:
    """What happened to the rows: counts the user sees in the run summary and the lineage."""

    source: str
    shape: str
    rows_read: int = 0
    duplicates_dropped: int = 0
    leaked_dropped: int = 0
    leakage: dict[str, int] = field(default_factory=dict)
    splits: dict[str, int] = field(default_factory=dict)
    sha256: str = ""
    truncated: int = 0
    """Training rows longer than max_seq_len kept with the start of their prompt cut (data.overlong=truncate)."""
    overlong_dropped: int = 0
    """Training rows longer than max_seq_len left out (data.overlong=drop, or a completion that alone is too long)."""


def clean_text(text: str) -> str:
    """Normalize line endings, strip trailing spaces per line and outer blank space."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return "\n".join(re.sub(r"[ \t]+$", "", line) for line in text.split("\n")).strip()


def _text(
    row: dict[str, Any], key: str, where: str, problems: list[str], optional: bool = False
) -> str | None:
    if key not in row:
        if not optional:
            problems.append(f"{where}: missing field {key!r}")
        return None
    value = row[key]
    if not isinstance(value, str):
        problems.append(f"{where}: field {key!r} must be a string, got {type(value).__name__}")
        return None
    value = clean_text(value)
    if not value and not optional:
        problems.append(f"{where}: field {key!r} is empty")
        return None
    return value


def _detect_shape(row: dict[str, Any]) -> str | None:
    for shape, keys in SHAPES.items():
        if keys <= row.keys():
            return shape
    return None


def row_to_example(row: dict[str, Any], shape: str, where: str, problems: list[str]) -> Example | None:
    before = len(problems)
    if shape == "alpaca":
        instruction = _text(row, "instruction", where, problems)
        extra: str | None = _text(row, "input", where, problems, optional=True)
        output = _text(row, "output", where, problems)
        if len(problems) > before or instruction is None or output is None:
            return None
        text = f"{instruction}\n\n{extra}" if extra else instruction
        return Example((("user", text),), output, where)
    if shape == "prompt_completion":
        prompt = _text(row, "prompt", where, problems)
        completion = _text(row, "completion", where, problems)
        if prompt is None or completion is None:
            return None
        return Example((("user", prompt),), completion, where)
    messages = row["messages"]
    if not isinstance(messages, list) or len(messages) < 2:
        problems.append(f"{where}: field 'messages' must be a list of at least 2 messages")
        return None
    turns: list[tuple[str, str]] = []
    for i, msg in enumerate(messages):
        at = f"{where}: messages[{i}]"
        if not isinstance(msg, dict):
            problems.append(f"{at} must be an object with 'role' and 'content'")
            continue
        role = msg.get("role")
        if role not in _ROLES:
            problems.append(f"{at}.role must be one of system/user/assistant, got {role!r}")
            continue
        content = _text(msg, "content", at, problems)
        if content is not None:
            turns.append((role, content))
    if len(problems) > before:
        return None
    if turns[-1][0] != "assistant":
        problems.append(f"{where}: the last message must be the assistant's answer (role 'assistant')")
        return None
    if turns[-2][0] != "user":
        problems.append(f"{where}: the message before the answer must be a 'user' turn")
        return None
    return Example(tuple(turns[:-1]), turns[-1][1], where)


def json_objects(path: Path, problems: list[str]) -> Iterator[tuple[int, str, dict[str, Any]]]:
    """(line number, `file:line`, object) for every non-blank line of a JSONL file. An unreadable file raises
    DataError; a line that is not a JSON object is added to `problems` and skipped."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise DataError([f"cannot read: {exc.strerror}"], str(path)) from exc
    except UnicodeDecodeError as exc:
        raise DataError([f"not UTF-8 text ({exc.reason} at byte {exc.start})"], str(path)) from exc
    for lineno, line in enumerate(lines, 1):
        where = f"{path}:{lineno}"
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(f"{where}: invalid JSON ({exc.msg} at column {exc.colno})")
            continue
        if not isinstance(row, dict):
            problems.append(f"{where}: each line must be a JSON object, got {type(row).__name__}")
            continue
        yield lineno, where, row


def read_jsonl(path: Path) -> tuple[list[Example], str]:
    """Read and validate one JSONL file; raise DataError listing every bad row."""
    problems: list[str] = []
    examples: list[Example] = []
    shape: str | None = None
    shape_line = 0
    for lineno, where, row in json_objects(path, problems):
        row_shape = _detect_shape(row)
        if row_shape is None:
            problems.append(
                f"{where}: unknown row shape with fields {sorted(row)}; expected alpaca "
                "(instruction/input/output), prompt/completion, or chat (messages)"
            )
            continue
        if shape is None:
            shape, shape_line = row_shape, lineno
        elif row_shape != shape:
            problems.append(
                f"{where}: row is {row_shape} but line {shape_line} is {shape}; one shape per file"
            )
            continue
        example = row_to_example(row, row_shape, where, problems)
        if example is not None:
            examples.append(example)
    if problems:
        raise DataError(problems, str(path))
    if not examples:
        raise DataError(["no rows"], str(path))
    assert shape is not None
    return examples, shape


def _resolve_path(spec: str) -> list[Path]:
    if spec.startswith("sample:"):
        from trainer.samples import SAMPLES, sample_path

        name = spec.split(":", 1)[1]
        if name not in SAMPLES:
            raise DataError([f"unknown sample {name!r}; known: {', '.join(sorted(SAMPLES))}"], spec)
        return [sample_path(name)]
    path = Path(spec).expanduser()
    if path.is_dir():
        files = sorted(path.glob("*.jsonl"))
        if not files:
            raise DataError(["folder has no *.jsonl files"], spec)
        return files
    if not path.exists():
        raise DataError(
            ["no such file or folder (use a .jsonl path, a folder, sample:<name> or hf:<name>)"], spec
        )
    return [path]


def _load_hf(name: str) -> tuple[list[Example], str]:
    try:
        import datasets

        ds = datasets.load_dataset(name, split="train")
    except Exception as exc:
        raise DataError(
            [f"cannot load Hugging Face dataset: {type(exc).__name__}: {exc}"], f"hf:{name}"
        ) from exc
    problems: list[str] = []
    examples: list[Example] = []
    first = ds[0] if len(ds) else {}
    shape = _detect_shape(first)
    if shape is None:
        raise DataError([f"unknown row shape with fields {sorted(first)}"], f"hf:{name}")
    for i, row in enumerate(ds):
        ex = row_to_example(dict(row), shape, f"hf:{name}[{i}]", problems)
        if ex is not None:
            examples.append(ex)
    if problems:
        raise DataError(problems, f"hf:{name}")
    return examples, shape


def load_examples(spec: str) -> tuple[list[Example], str, str]:
    """Load rows from a spec; returns (examples, shape, sha256 of the raw bytes)."""
    if spec.startswith("hf:"):
        examples, shape = _load_hf(spec[3:])
        return examples, shape, hashlib.sha256(spec.encode()).hexdigest()
    h = hashlib.sha256()
    all_examples: list[Example] = []
    shapes: dict[str, Path] = {}
    for path in _resolve_path(spec):
        examples, shape = read_jsonl(path)
        h.update(path.read_bytes())
        shapes.setdefault(shape, path)
        all_examples.extend(examples)
    if len(shapes) > 1:
        detail = ", ".join(f"{p.name} is {s}" for s, p in shapes.items())
        raise DataError([f"files of different shapes: {detail}"], spec)
    return all_examples, next(iter(shapes)), h.hexdigest()


def dedup(examples: list[Example]) -> tuple[list[Example], int]:
    seen: set[str] = set()
    out = []
    for ex in examples:
        d = ex.digest()
        if d not in seen:
            seen.add(d)
            out.append(ex)
    return out, len(examples) - len(out)


def split_of(example: Example, val_fraction: float, test_fraction: float) -> str:
    """Deterministic split by a hash bucket of the prompt (stable under reordering)."""
    bucket = int(hashlib.sha256(example.prompt_key.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    if bucket < test_fraction:
        return "test"
    if bucket < test_fraction + val_fraction:
        return "val"
    return "train"


def leakage(splits: dict[str, list[Example]]) -> dict[str, int]:
    """Rows of val/test whose prompt, or whose completion, also appears in train."""
    train_prompts = {ex.prompt_key for ex in splits["train"]}
    train_completions = Counter(ex.completion for ex in splits["train"])
    report = {}
    for name in ("val", "test"):
        rows = splits.get(name, [])
        report[f"{name}_prompt_overlap"] = sum(ex.prompt_key in train_prompts for ex in rows)
        report[f"{name}_completion_overlap"] = sum(ex.completion in train_completions for ex in rows)
    return report


def prepare(
    spec: str,
    *,
    test_spec: str | None = None,
    val_fraction: float = 0.05,
    test_fraction: float = 0.12,
    do_dedup: bool = True,
    drop_leaked: bool = True,
) -> tuple[dict[str, list[Example]], DataReport]:
    """Load, clean, dedup, split and leakage-check a dataset."""
    examples, shape, sha = load_examples(spec)
    report = DataReport(source=spec, shape=shape, rows_read=len(examples))
    if do_dedup:
        examples, report.duplicates_dropped = dedup(examples)
    splits: dict[str, list[Example]] = {"train": [], "val": [], "test": []}
    for ex in examples:
        splits[split_of(ex, val_fraction, 0.0 if test_spec else test_fraction)].append(ex)
    if test_spec:
        test_rows, _, test_sha = load_examples(test_spec)
        splits["test"] = dedup(test_rows)[0] if do_dedup else test_rows
        sha = hashlib.sha256((sha + test_sha).encode()).hexdigest()
    report.leakage = leakage(splits)
    if drop_leaked:
        train_prompts = {ex.prompt_key for ex in splits["train"]}
        for name in ("val", "test"):
            kept = [ex for ex in splits[name] if ex.prompt_key not in train_prompts]
            report.leaked_dropped += len(splits[name]) - len(kept)
            splits[name] = kept
    if not splits["train"]:
        raise DataError(
            ["no training rows left after the split; add rows or lower the val/test fractions"], spec
        )
    report.splits = {k: len(v) for k, v in splits.items()}
    report.sha256 = sha
    return splits, report
