"""Data preparation streams: bounded memory whatever the file's size, same splits as reading it all at once."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import pytest

from trainer.data import Example, dedup, load_examples, prepare, split_of
from trainer.errors import DataError
from trainer.hygiene import check


def write(path: Path, rows: list[object]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def in_memory(spec: str, test_spec: str | None = None) -> tuple[dict[str, list[Example]], dict[str, object]]:
    """What `prepare` did before it streamed: every row in a list, dedup by a set, the prompt-hash split,
    leakage by sets of prompts and completions, leaked held-out rows dropped."""
    examples, _, _ = load_examples(spec)
    examples, dropped = dedup(examples)
    splits: dict[str, list[Example]] = {"train": [], "val": [], "test": []}
    for ex in examples:
        splits[split_of(ex, 0.05, 0.0 if test_spec else 0.12)].append(ex)
    if test_spec:
        splits["test"] = dedup(load_examples(test_spec)[0])[0]
    prompts = {ex.prompt_key for ex in splits["train"]}
    completions = {ex.completion for ex in splits["train"]}
    leakage, leaked = {}, 0
    for name in ("val", "test"):
        leakage[f"{name}_prompt_overlap"] = sum(ex.prompt_key in prompts for ex in splits[name])
        leakage[f"{name}_completion_overlap"] = sum(ex.completion in completions for ex in splits[name])
        kept = [ex for ex in splits[name] if ex.prompt_key not in prompts]
        leaked += len(splits[name]) - len(kept)
        splits[name] = kept
    return splits, {"duplicates_dropped": dropped, "leakage": leakage, "leaked_dropped": leaked}


def rows_with_duplicates(n: int) -> list[dict[str, str]]:
    rows = [
        {"prompt": f"my order {i % 97} of item {i} is late", "completion": f"answer {i % 13}"}
        for i in range(n)
    ]
    rows += rows[: n // 10]  # exact duplicates, spread over every split
    rows += [
        {"prompt": r["prompt"] + "  ", "completion": r["completion"]} for r in rows[5 : n // 5 : 7]
    ]  # equal after cleaning
    return rows


def test_streamed_splits_equal_the_in_memory_ones(tmp_path: Path) -> None:
    data = write(tmp_path / "d.jsonl", rows_with_duplicates(600))
    held = write(
        tmp_path / "h.jsonl",
        [{"prompt": f"my order 3 of item {i} is late", "completion": "z"} for i in range(0, 60, 3)],
    )
    for test_spec in (None, str(held)):
        splits, report = prepare(str(data), test_spec=test_spec)
        expected, counts = in_memory(str(data), test_spec)
        for name in ("train", "val", "test"):
            assert [(e.source, e.messages, e.completion) for e in splits[name]] == [
                (e.source, e.messages, e.completion) for e in expected[name]
            ]
        assert report.duplicates_dropped == counts["duplicates_dropped"] > 60
        assert report.leakage == counts["leakage"] and report.leaked_dropped == counts["leaked_dropped"]
        assert report.splits == {k: len(v) for k, v in expected.items()}
    assert report.leaked_dropped > 0  # the separate test file shares prompts with train


def test_the_prepared_splits_read_like_lists(tmp_path: Path) -> None:
    splits, _ = prepare(str(write(tmp_path / "d.jsonl", rows_with_duplicates(5000))))
    train = splits["train"]
    as_list = list(train)
    assert len(as_list) == len(train) > 2 * 2048  # more than one record batch, with dedup gaps
    assert train[0] == as_list[0] and train[-1] == as_list[-1] and train[2100] == as_list[2100]
    assert list(train[10:4000:3]) == as_list[10:4000:3] and len(train[:5]) == 5
    with pytest.raises(IndexError):
        train[len(train)]


def test_preparing_a_large_file_holds_a_bounded_number_of_rows(tmp_path: Path) -> None:
    """Peak Python memory (tracemalloc) while preparing: about a record batch of rows and 32 bytes a row
    of hashes, not the file. Reading it all at once holds the text, its lines and every row (> 2x the file)."""
    filler = "the parcel was left at the wrong door and nobody answers the phone at the depot. " * 12
    rows = [{"prompt": f"ticket {i}: {filler}", "completion": f"category {i % 7}"} for i in range(24_000)]
    path = write(tmp_path / "big.jsonl", rows)
    size = path.stat().st_size
    prepare(str(write(tmp_path / "warm.jsonl", rows[:50])))  # the libraries' imports are not the rows
    tracemalloc.start()
    try:
        _splits, report = prepare(str(path))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert report.rows_read == 24_000 and sum(report.splits.values()) == 24_000
    row_bytes = size / len(rows)
    bound = 3 * 2048 * row_bytes + 64 * len(rows) + 2 * 2**20  # 3 copies of a batch, hashes, slack
    assert peak < min(bound, size / 2), f"peak {peak / 2**20:.1f} MiB for a {size / 2**20:.1f} MiB file"


def test_a_file_of_bad_rows_keeps_the_first_problems_and_counts_all(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.jsonl", [{"prompt": "ok", "completion": "fine"}] + ["{not json"] * 3000)
    with pytest.raises(DataError) as err:
        load_examples(str(path))
    assert err.value.total == 3000 and len(err.value.problems) == 1000
    assert f"3000 bad row(s):\n  - {path}:2: invalid JSON" in str(err.value) and "... and 2950 more" in str(
        err.value
    )


def test_non_utf8_bytes_are_named_by_their_offset_in_the_file(tmp_path: Path) -> None:
    path = tmp_path / "latin1.jsonl"
    first = b'{"prompt": "ok", "completion": "fine"}\n'
    path.write_bytes(first + b'{"prompt": "caf\xe9", "completion": "x"}\n')
    with pytest.raises(
        DataError, match=rf"not UTF-8 text \(invalid continuation byte at byte {len(first) + 15}\)"
    ):
        load_examples(str(path))


def test_near_duplicates_of_a_large_split_are_checked_on_a_stated_sample() -> None:
    text = "the blue backpack I ordered arrived with a torn strap and a broken zipper please help"
    train = [Example((("user", f"{text} {i}"),), "shipping", f"f:{i}") for i in range(300)]
    splits = {"train": train, "val": train[:40], "test": []}
    _, report = check(splits, redact_pii=False, threshold=0.5, max_rows=60)
    assert report.near_duplicate_sample == {"train": [60, 300], "heldout": [40, 40]}
    assert report.near_duplicate_pairs == 60 * 59 // 2
    assert "in an even sample: 60 of 300 training rows, 40 of 40 held-out rows" in report.summary()
    _, small = check(splits, redact_pii=False, threshold=0.5)
    assert small.near_duplicate_sample == {} and "sample" not in small.summary()
