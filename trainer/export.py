"""Logged traffic -> a training file: `platform data export NAME --out FILE.jsonl`.

Rows come from the payloads a server logged (`platform serve --log-payloads NAME`), filtered by
version, feedback and age, and are written in the chat shape `platform train` reads (one
`{"messages": [..., {"role": "assistant", ...}]}` per line), deduplicated. Rows whose prompt is
one of the held-out test rows of the versions that answered them (the `heldout.json` training
writes into each version's folder) are dropped and counted: training on them would leak the
evaluation set (compared before redaction, by the digest the server logs beside each row). A sidecar `FILE.jsonl.export.json` records the filters, counts and the file's
sha256; `platform train` copies it into the new version's lineage.

Preference rows, for DPO and KTO (TRL's conversational shapes, so its trainers read them as is):
`--pairs` writes `{"prompt": [...], "chosen": [assistant turn], "rejected": [assistant turn]}` from
review choices (the answer the reviewers' majority preferred against the other, with each rubric
criterion's mean score per side) and from thumbs up against thumbs down answers to the same prompt;
`--unpaired` writes `{"prompt": [...], "completion": [assistant turn], "label": true|false}` from
thumbs and from both answers of each review choice. The same held-out, dedup and sidecar rules apply.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from registry.errors import RegistryError
from registry.payloads import LoggedCompletion, prompt_digest
from registry.reviews import PreferredAnswer, Rating
from registry.store import Registry
from trainer.data import Example, dedup, row_to_example
from trainer.errors import TrainerError

HELDOUT_FILE = "heldout.json"
SIDECAR_SUFFIX = ".export.json"
_ROLE = {"developer": "system", "system": "system", "user": "user", "assistant": "assistant"}
ExportKind = Literal["sft", "pairs", "unpaired"]
PAIRS_PER_PROMPT = 4
"""At most this many thumbs-up x thumbs-down pairs per prompt (a popular prompt does not dominate)."""
DISLIKED_AS_SFT = (
    "--thumbs down selects answers users disliked: as SFT rows they would teach the model to write "
    "them; export them as KTO rows (--unpaired, labelled false) or as the rejected side of --pairs"
)


@dataclass(frozen=True)
class ExportFilters:
    """Which logged rows go into the file."""

    version: str | None = None
    """Only rows this version answered (a reference, resolved to `name@N`)."""
    thumbs: str | None = None
    """`up` or `down`: only rows with that latest thumbs feedback."""
    min_score: float | None = None
    """Only rows whose latest score is at least this."""
    since_s: float | None = None
    """Only rows logged in the last this many seconds."""
    reviewed: bool = False
    """Human-reviewed items with their preferred answer (`platform review`)."""


@dataclass
class ExportReport:
    """What the export wrote and what it left out."""

    name: str
    out: str
    filters: dict[str, Any]
    logged: int = 0
    filtered_out: int = 0
    unusable: int = 0
    """Rows that are not a training row: errors, empty answers, token-id prompts, other roles."""
    duplicates_dropped: int = 0
    leaked_dropped: int = 0
    rows: int = 0
    versions: list[str] = field(default_factory=list)
    heldout_checked: list[str] = field(default_factory=list)
    """Versions whose held-out rows were checked (a version without a record is not listed)."""
    sha256: str = ""
    created: str = ""
    kind: str = "sft"
    """`sft` (chat rows), `pairs` (prompt, chosen, rejected) or `unpaired` (prompt, completion, label)."""
    sources: dict[str, int] = field(default_factory=dict)
    """Rows written per source (`feedback`, `review`)."""


def user_key(text: str) -> str:
    return prompt_digest(text)


def prompt_key(example: Example) -> str:
    return hashlib.sha256(example.prompt_key.encode()).hexdigest()


def heldout_record(test_rows: Iterable[Example]) -> dict[str, Any]:
    """What training writes to `heldout.json`: hashes of each test row's prompt and last user turn."""
    return {
        "prompt_sha256": sorted({prompt_key(ex) for ex in test_rows}),
        "user_sha256": sorted({user_key(ex.messages[-1][1]) for ex in test_rows}),
    }


def _heldout_keys(folder: Path) -> set[str] | None:
    """The held-out hashes of a version folder; from `predictions.jsonl` for older versions."""
    record = folder / HELDOUT_FILE
    if record.is_file():
        data = json.loads(record.read_text())
        return set(data.get("prompt_sha256", [])) | set(data.get("user_sha256", []))
    predictions = folder / "predictions.jsonl"
    if predictions.is_file():
        lines = predictions.read_text().splitlines()
        return {user_key(json.loads(line)["prompt"]) for line in lines if line.strip()}
    return None


def _example(c: LoggedCompletion) -> Example | None:
    """A logged completion as a training row, or None when it cannot be one."""
    r = c.record
    if r.status != "ok" or not (r.completion or "").strip():
        return None
    request = r.request_json()
    if isinstance(request.get("prompt"), str):
        messages = [{"role": "user", "content": request["prompt"]}]
    elif isinstance(request.get("messages"), list):
        messages = [
            {"role": _ROLE.get(m.get("role"), "?"), "content": m.get("content")} for m in request["messages"]
        ]
    else:
        return None
    return _chat_example(messages, r.completion or "", f"payload {r.id}")


def _chat_example(messages: list[dict[str, Any]], answer: str, source: str) -> Example | None:
    """Prompt messages and an answer as a training row (what `platform train` reads), or None."""
    problems: list[str] = []
    row = {"messages": [*messages, {"role": "assistant", "content": answer}]}
    example = row_to_example(row, "chat", source, problems)
    return None if problems else example


def _keep(c: LoggedCompletion, f: ExportFilters, since: float | None) -> bool:
    if f.version is not None and c.record.version != f.version:
        return False
    if f.thumbs is not None and c.thumbs != (1 if f.thumbs == "up" else 0):
        return False
    if f.min_score is not None and (c.score is None or c.score < f.min_score):
        return False
    return since is None or c.record.ts >= since


def traffic_prompts(registry: Registry, ref: str) -> list[Example]:
    """The prompts of logged traffic (`--log-payloads`) for `ref`: every version of a plain name,
    or the version `name@N` / `name:alias` points to (`platform review create --from-traffic`)."""
    from registry.refs import parse_ref

    parsed = parse_ref(ref)
    version = None if parsed.version is None and parsed.alias is None else registry.get(ref, False).ref
    logged = registry.payloads().completions(parsed.name, version)
    return [ex for ex in (_example(c) for c in logged) if ex is not None]


def reviewed_rows(registry: Registry, name: str) -> list[tuple[Example, str]]:
    """Human-reviewed items whose preferred answer a version of `name` wrote (`platform review`),
    as training rows with that version."""
    rows: list[tuple[Example, str]] = []
    for p in registry.reviews().preferred():
        if p.version.split("@", 1)[0] != name:
            continue
        example = _chat_example(list(p.messages), p.answer, f"review {p.review} item {p.item}")
        if example is not None:
            rows.append((example, p.version))
    return rows


def _check(filters: ExportFilters, kind: ExportKind) -> None:
    if filters.thumbs not in (None, "up", "down"):
        raise TrainerError(f"thumbs must be 'up' or 'down', got {filters.thumbs!r}")
    if kind == "sft" and filters.thumbs == "down":
        raise TrainerError(DISLIKED_AS_SFT)
    if kind == "pairs" and filters.thumbs is not None:
        raise TrainerError(
            "--pairs takes both thumbs (up answers are chosen, down answers rejected): drop --thumbs"
        )
    if kind != "sft" and filters.min_score is not None:
        raise TrainerError("--min-score selects SFT rows; preference rows keep each score as a field")


def export(
    name: str,
    out: Path,
    filters: ExportFilters,
    registry_root: str | None = None,
    kind: ExportKind = "sft",
) -> ExportReport:
    """Write the training file and its sidecar; return what was written and dropped."""
    _check(filters, kind)
    registry = Registry(registry_root)
    try:
        if filters.version is not None:
            filters = ExportFilters(
                **{**asdict(filters), "version": registry.get(filters.version, False).ref}
            )
        logged = registry.payloads().completions(name)
        reviewed = reviewed_rows(registry, name) if filters.reviewed and kind == "sft" else []
        choices = review_choices(registry, name, filters.version) if kind != "sft" else []
        report = ExportReport(name, str(out), asdict(filters), logged=len(logged), kind=kind)
        since = None if filters.since_s is None else time.time() - filters.since_s
        kept = [c for c in logged if _keep(c, filters, since)]
        report.filtered_out = len(logged) - len(kept)
        pairs = [(c, _example(c)) for c in kept]
        report.unusable = sum(ex is None for _, ex in pairs)
        examples = [(c, ex) for c, ex in pairs if ex is not None]
        report.versions = sorted(
            {c.record.version for c, _ in examples}
            | {v for _, v in reviewed}
            | {v for p, _ in choices for v in (p.version, p.rejected_version)}
        )
        heldout = _heldout(registry, report)
    finally:
        registry.close()
    if kind != "sft":
        lines = _preference_lines(kind, examples, choices, heldout, filters, report)
        _write(out, lines, report)
        return report
    clean = [ex for c, ex in examples if not _leaks(ex, c.record.prompt_sha256, heldout)]
    clean += [ex for ex, _ in reviewed if not _leaks(ex, None, heldout)]
    report.leaked_dropped = len(examples) + len(reviewed) - len(clean)
    rows, report.duplicates_dropped = dedup(clean)
    report.rows = len(rows)
    _write(
        out, [json.dumps({"messages": [*ex.prompt_messages, _turn(ex.completion)[0]]}) for ex in rows], report
    )
    return report


def review_choices(
    registry: Registry, name: str, version: str | None = None
) -> list[tuple[PreferredAnswer, dict[str, dict[str, float]]]]:
    """Review choices where a version of `name` wrote one side (or `version` did), each with its
    rubric criteria's mean scores: `{criterion: {"chosen": mean, "rejected": mean}}`."""
    out = []
    by_review: dict[str, list[Rating]] = {}
    for p in registry.reviews().preferred():
        sides = (p.version, p.rejected_version)
        if name not in {v.split("@", 1)[0] for v in sides} or version not in (None, *sides):
            continue
        if p.review not in by_review:
            by_review[p.review] = registry.reviews().ratings(p.review, complete_only=True)
        item_ratings = [r for r in by_review[p.review] if r.item == p.item]
        out.append((p, _criterion_means(item_ratings, p.side)))
    return out


def _criterion_means(item_ratings: list[Rating], side: str) -> dict[str, dict[str, float]]:
    other = "b" if side == "a" else "a"
    seen: dict[str, dict[str, list[int]]] = {}
    for r in item_ratings:
        for criterion, by_side in r.scores.items():
            for role, s in (("chosen", side), ("rejected", other)):
                if s in by_side:
                    seen.setdefault(criterion, {}).setdefault(role, []).append(by_side[s])
    return {c: {role: round(sum(v) / len(v), 3) for role, v in d.items()} for c, d in seen.items()}


def _turn(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def _preference_lines(
    kind: ExportKind,
    examples: list[tuple[LoggedCompletion, Example]],
    choices: list[tuple[PreferredAnswer, dict[str, dict[str, float]]]],
    heldout: set[str],
    filters: ExportFilters,
    report: ExportReport,
) -> list[str]:
    """Pairs or labelled rows from thumbs and review choices, held-out prompts and duplicates dropped."""
    rated = [(c, ex) for c, ex in examples if c.thumbs is not None]
    report.unusable += len(examples) - len(rated)  # no thumbs: neither preferred nor not
    clean = [(c, ex) for c, ex in rated if not _leaks(ex, c.record.prompt_sha256, heldout)]
    report.leaked_dropped = len(rated) - len(clean)
    chosen: list[tuple[PreferredAnswer, dict[str, dict[str, float]], Example]] = []
    for p, means in choices:
        ex = _chat_example(list(p.messages), p.answer, f"review {p.review} item {p.item}")
        if ex is None:
            report.unusable += 1
        elif _leaks(ex, None, heldout):
            report.leaked_dropped += 1
        else:
            chosen.append((p, means, ex))
    rows = _pair_rows(clean, chosen) if kind == "pairs" else _labelled_rows(clean, chosen, filters.thumbs)
    seen: set[str] = set()
    lines: list[str] = []
    for row in rows:
        key_fields = (
            ("prompt", "chosen", "rejected") if kind == "pairs" else ("prompt", "completion", "label")
        )
        key = json.dumps([row[k] for k in key_fields])
        if key in seen:
            report.duplicates_dropped += 1
            continue
        seen.add(key)
        lines.append(json.dumps(row))
        report.sources[row["source"]] = report.sources.get(row["source"], 0) + 1
    report.rows = len(lines)
    return lines


def _pair_rows(
    rated: list[tuple[LoggedCompletion, Example]],
    choices: list[tuple[PreferredAnswer, dict[str, dict[str, float]], Example]],
) -> list[dict[str, Any]]:
    rows = [
        {
            "prompt": ex.prompt_messages,
            "chosen": _turn(p.answer),
            "rejected": _turn(p.rejected),
            "source": "review",
            "review": p.review,
            "item": p.item,
            "chosen_version": p.version,
            "rejected_version": p.rejected_version,
            "votes": p.votes,
            "ratings": p.ratings,
            "scores": means,
        }
        for p, means, ex in choices
    ]
    by_prompt: dict[
        str, tuple[list[tuple[LoggedCompletion, Example]], list[tuple[LoggedCompletion, Example]]]
    ] = {}
    for c, ex in rated:
        group = by_prompt.setdefault(ex.prompt_key, ([], []))
        group[0 if c.thumbs == 1 else 1].append((c, ex))
    for ups, downs in by_prompt.values():
        distinct = ((u, d) for u, d in itertools.product(ups, downs) if u[1].completion != d[1].completion)
        for (cu, eu), (cd, ed) in itertools.islice(distinct, PAIRS_PER_PROMPT):
            rows.append(
                {
                    "prompt": eu.prompt_messages,
                    "chosen": _turn(eu.completion),
                    "rejected": _turn(ed.completion),
                    "source": "feedback",
                    "chosen_version": cu.record.version,
                    "rejected_version": cd.record.version,
                    "scores": {"score": {"chosen": cu.score, "rejected": cd.score}},
                }
            )
    return rows


def _labelled_rows(
    rated: list[tuple[LoggedCompletion, Example]],
    choices: list[tuple[PreferredAnswer, dict[str, dict[str, float]], Example]],
    thumbs: str | None,
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for p, means, ex in choices:
        for label, answer, version, role in (
            (True, p.answer, p.version, "chosen"),
            (False, p.rejected, p.rejected_version, "rejected"),
        ):
            scores = {c: by_role[role] for c, by_role in means.items() if role in by_role}
            rows.append(
                {
                    "prompt": ex.prompt_messages,
                    "completion": _turn(answer),
                    "label": label,
                    "source": "review",
                    "review": p.review,
                    "item": p.item,
                    "version": version,
                    "scores": scores,
                }
            )
    for c, ex in rated:
        rows.append(
            {
                "prompt": ex.prompt_messages,
                "completion": _turn(ex.completion),
                "label": c.thumbs == 1,
                "source": "feedback",
                "version": c.record.version,
                "scores": {"score": c.score},
            }
        )
    if thumbs is not None:
        rows = [r for r in rows if r["label"] == (thumbs == "up")]
    return rows


def _heldout(registry: Registry, report: ExportReport) -> set[str]:
    keys: set[str] = set()
    for version in report.versions:
        try:
            folder = registry.get(version).path
        except RegistryError:  # the base model, or a version removed since
            continue
        found = _heldout_keys(folder)
        if found is not None:
            keys |= found
            report.heldout_checked.append(version)
    return keys


def _leaks(example: Example, logged_digest: str | None, heldout: set[str]) -> bool:
    """Whether a row's prompt is held out: as logged before redaction, or as exported."""
    keys = {prompt_key(example), user_key(example.messages[-1][1]), logged_digest}
    return bool(keys & heldout)


def _write(out: Path, lines: list[str], report: ExportReport) -> None:
    if not lines:
        raise TrainerError(
            f"no rows to export for {report.name!r}: {report.logged} logged, {report.filtered_out} filtered out, "
            f"{report.unusable} unusable, {report.leaked_dropped} held-out leaks; loosen the filters"
        )
    data = ("\n".join(lines) + "\n").encode()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)
    report.sha256 = hashlib.sha256(data).hexdigest()
    report.created = datetime.now(UTC).isoformat(timespec="seconds")
    sidecar(out).write_text(json.dumps(asdict(report), indent=2) + "\n")


def sidecar(path: Path) -> Path:
    return path.with_name(path.name + SIDECAR_SUFFIX)


def export_lineage(spec: str) -> dict[str, Any] | None:
    """The export record of a training file made by `platform data export` (None for other data),
    with whether the file is still the one exported (`unchanged`)."""
    path = Path(spec).expanduser()
    if spec.startswith(("sample:", "hf:")) or not path.is_file() or not sidecar(path).is_file():
        return None
    try:
        record = json.loads(sidecar(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(record, dict):
        return None
    actual = hashlib.sha256(path.read_bytes()).hexdigest()
    return {**record, "file": str(path), "unchanged": actual == record.get("sha256")}
