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
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
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


_TRAILING_BLANKS = re.compile(r"[ \t]+$", re.MULTILINE)


def clean_text(text: str) -> str:
    """Normalize line endings, strip trailing spaces per line and outer blank space."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return _TRAILING_BLANKS.sub("", text).strip()


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


MAX_PROBLEMS = 1000
"""Bad-row messages kept per file (every one is counted): a broken multi-million-row file stays bounded."""


class Problems(list[str]):
    """Bad-row messages of one file: the first MAX_PROBLEMS kept, `total` counts all."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def append(self, problem: str) -> None:
        self.total += 1
        if len(self) < MAX_PROBLEMS:
            super().append(problem)

    def extend(self, problems: Iterable[str]) -> None:
        for problem in problems:
            self.append(problem)

    def error(self, source: str) -> DataError:
        return DataError(list(self), source, self.total)


def _lines(path: Path, sha: Any = None) -> Iterator[tuple[int, str]]:
    """(line number, text) of every line of a file, read as a stream (never the whole file at once);
    `sha` (a hashlib object) is fed the raw bytes. An unreadable or non-UTF-8 file raises DataError."""
    offset = 0
    try:
        with path.open("rb") as fh:
            for lineno, raw in enumerate(fh, 1):
                if sha is not None:
                    sha.update(raw)
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    problem = f"not UTF-8 text ({exc.reason} at byte {offset + exc.start})"
                    raise DataError([problem], str(path)) from exc
                offset += len(raw)
                yield lineno, text
    except OSError as exc:
        raise DataError([f"cannot read: {exc.strerror}"], str(path)) from exc


def json_objects(
    path: Path, problems: list[str], sha: Any = None
) -> Iterator[tuple[int, str, dict[str, Any]]]:
    """(line number, `file:line`, object) for every non-blank line of a JSONL file, streamed. An unreadable
    file raises DataError; a line that is not a JSON object is added to `problems` and skipped."""
    for lineno, line in _lines(path, sha):
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


class JsonlRows:
    """The valid rows of one JSONL file, as a stream: iterating reads the file once; after the last row it
    raises DataError listing every bad row (file:line), or `no rows`. `shape` is the file's row shape and
    `sha` (a hashlib object, optional) is fed the raw bytes."""

    def __init__(self, path: Path, sha: Any = None) -> None:
        self.path, self.sha = path, sha
        self.shape = ""

    def __iter__(self) -> Iterator[Example]:
        problems = Problems()
        shape_line = rows = 0
        for lineno, where, row in json_objects(self.path, problems, self.sha):
            row_shape = _detect_shape(row)
            if row_shape is None:
                problems.append(
                    f"{where}: unknown row shape with fields {sorted(row)}; expected alpaca "
                    "(instruction/input/output), prompt/completion, or chat (messages)"
                )
                continue
            if not self.shape:
                self.shape, shape_line = row_shape, lineno
            elif row_shape != self.shape:
                problems.append(
                    f"{where}: row is {row_shape} but line {shape_line} is {self.shape}; one shape per file"
                )
                continue
            row_problems: list[str] = []
            example = row_to_example(row, row_shape, where, row_problems)
            problems.extend(row_problems)
            if example is not None and not problems.total:
                rows += 1
                yield example
        if problems.total:
            raise problems.error(str(self.path))
        if not rows:
            raise DataError(["no rows"], str(self.path))


def read_jsonl(path: Path) -> tuple[list[Example], str]:
    """Read and validate one JSONL file; raise DataError listing every bad row."""
    rows = JsonlRows(path)
    return list(rows), rows.shape


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


def stream_examples(spec: str, add: Callable[[Example], None]) -> tuple[str, str, int]:
    """Hand every row of a spec to `add`, file by file, as it is read; (shape, sha256 of the raw bytes, rows).
    Raises DataError for bad rows (after reading the file they are in) or files of different shapes."""
    if spec.startswith("hf:"):
        examples, shape = _load_hf(spec[3:])
        for ex in examples:
            add(ex)
        return shape, hashlib.sha256(spec.encode()).hexdigest(), len(examples)
    h = hashlib.sha256()
    shapes: dict[str, Path] = {}
    rows = 0
    for path in _resolve_path(spec):
        file_rows = JsonlRows(path, h)
        for example in file_rows:
            add(example)
            rows += 1
        shapes.setdefault(file_rows.shape, path)
    if len(shapes) > 1:
        detail = ", ".join(f"{p.name} is {s}" for s, p in shapes.items())
        raise DataError([f"files of different shapes: {detail}"], spec)
    return next(iter(shapes)), h.hexdigest(), rows


def load_examples(spec: str) -> tuple[list[Example], str, str]:
    """Load rows from a spec into memory; returns (examples, shape, sha256 of the raw bytes)."""
    examples: list[Example] = []
    shape, sha, _ = stream_examples(spec, examples.append)
    return examples, shape, sha


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


def prepare(
    spec: str,
    *,
    test_spec: str | None = None,
    val_fraction: float = 0.05,
    test_fraction: float = 0.12,
    do_dedup: bool = True,
    drop_leaked: bool = True,
) -> tuple[dict[str, Sequence[Example]], DataReport]:
    """Load, clean, dedup, split and leakage-check a dataset, streaming it (see "Large datasets" in
    docs/training.md): rows go to an Arrow file per split as they are read, and dedup and leakage work on
    16-byte hashes, so memory stays bounded whatever the file's size. The splits are read-only sequences
    over those files (`trainer.rowstore.Rows`), in file order like the rows they came from."""
    from trainer.rowstore import SplitWriter

    with tempfile.TemporaryDirectory(prefix="lora-platform-data-") as tmp:
        rows = SplitWriter(Path(tmp) / "rows", val_fraction, 0.0 if test_spec else test_fraction)
        shape, sha, read = rows.fill(lambda add: stream_examples(spec, add))
        splits = rows.close()
        if test_spec:
            held = SplitWriter(Path(tmp) / "test", only="test")
            test_sha = held.fill(lambda add: stream_examples(test_spec, add))[1]
            splits["test"] = held.close()["test"]
            sha = hashlib.sha256((sha + test_sha).encode()).hexdigest()
    report = DataReport(source=spec, shape=shape, rows_read=read, sha256=sha)
    if do_dedup:
        for name, split in splits.items():
            dropped = split.dedup()
            report.duplicates_dropped += 0 if test_spec and name == "test" else dropped
    train = splits["train"]
    for name in ("val", "test"):
        prompt_in_train = splits[name].prompts_in(train)
        report.leakage[f"{name}_prompt_overlap"] = int(prompt_in_train.sum())
        report.leakage[f"{name}_completion_overlap"] = int(splits[name].completions_in(train).sum())
        if drop_leaked:
            report.leaked_dropped += splits[name].drop(prompt_in_train)
    if not len(train):
        raise DataError(
            ["no training rows left after the split; add rows or lower the val/test fractions"], spec
        )
    report.splits = {k: len(v) for k, v in splits.items()}
    return {k: v.rows for k, v in splits.items()}, report
