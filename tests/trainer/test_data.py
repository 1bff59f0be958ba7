"""Data loading: the three shapes, cleaning, dedup, a stable split, leakage, and clear errors."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from trainer.data import load_examples, prepare, split_of
from trainer.errors import DataError


def write(path: Path, rows: list[object]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_three_shapes_become_the_same_examples(tmp_path: Path) -> None:
    alpaca = write(tmp_path / "a.jsonl", [{"instruction": "Say hi", "input": "", "output": "hi"}])
    pc = write(tmp_path / "p.jsonl", [{"prompt": "Say hi", "completion": "hi"}])
    chat = write(
        tmp_path / "c.jsonl",
        [{"messages": [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "hi"}]}],
    )
    results = [load_examples(str(p))[0][0] for p in (alpaca, pc, chat)]
    assert {(r.messages, r.completion) for r in results} == {((("user", "Say hi"),), "hi")}
    assert [load_examples(str(p))[1] for p in (alpaca, pc, chat)] == ["alpaca", "prompt_completion", "chat"]


def test_every_bad_row_is_reported_with_file_and_line(tmp_path: Path) -> None:
    path = write(
        tmp_path / "bad.jsonl",
        [
            {"prompt": "ok", "completion": "fine"},
            "{not json",
            {"prompt": "missing completion"},
            {"prompt": 3, "completion": "x"},
            {"prompt": "   ", "completion": "x"},
            {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
            {"messages": [{"role": "robot", "content": "q"}, {"role": "assistant", "content": "a"}]},
        ],
    )
    with pytest.raises(DataError) as err:
        load_examples(str(path))
    text = str(err.value)
    assert f"{path}:2: invalid JSON" in text
    assert f"{path}:3: unknown row shape" in text
    assert f"{path}:4: field 'prompt' must be a string" in text
    assert f"{path}:5: field 'prompt' is empty" in text
    assert f"{path}:6: row is chat but line 1 is prompt_completion" in text
    assert len(err.value.problems) == 6


def test_chat_rows_must_end_with_the_assistant(tmp_path: Path) -> None:
    path = write(
        tmp_path / "c.jsonl",
        [{"messages": [{"role": "user", "content": "q"}, {"role": "user", "content": "a"}]}],
    )
    with pytest.raises(DataError, match=r"c.jsonl:1: the last message must be the assistant"):
        load_examples(str(path))


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope\.jsonl"):
        load_examples(str(tmp_path / "nope.jsonl"))


def test_cleaning_and_dedup(tmp_path: Path) -> None:
    rows = [
        {"prompt": "Hello  \r\n world ", "completion": "x"},
        {"prompt": "Hello\n world", "completion": "x  "},
    ]
    rows += [{"prompt": f"q{i}", "completion": "y"} for i in range(40)]
    _splits, report = prepare(str(write(tmp_path / "d.jsonl", rows)))
    assert report.duplicates_dropped == 1
    assert sum(report.splits.values()) == 41


def test_split_is_stable_under_reordering(tmp_path: Path) -> None:
    rows = [{"prompt": f"question {i}", "completion": f"answer {i}"} for i in range(300)]
    a, _ = prepare(str(write(tmp_path / "a.jsonl", rows)))
    random.Random(0).shuffle(rows)
    b, _ = prepare(str(write(tmp_path / "b.jsonl", rows)))
    for name in ("train", "val", "test"):
        assert {e.prompt_key for e in a[name]} == {e.prompt_key for e in b[name]}
    assert 15 < len(a["test"]) < 60


def test_leakage_between_a_separate_test_file_and_train_is_reported_and_dropped(tmp_path: Path) -> None:
    train = write(tmp_path / "t.jsonl", [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(50)])
    test = write(
        tmp_path / "h.jsonl", [{"prompt": "q1", "completion": "a1"}, {"prompt": "new", "completion": "z"}]
    )
    splits, report = prepare(str(train), test_spec=str(test), val_fraction=0.0)
    if any(e.prompt_key == "user:q1" for e in splits["train"]):
        assert report.leakage["test_prompt_overlap"] == 1
        assert report.leaked_dropped == 1
    assert [e.completion for e in splits["test"]] == (["z"] if report.leaked_dropped else ["a1", "z"])


def test_split_of_is_a_pure_function_of_the_prompt() -> None:
    from trainer.data import Example

    ex = Example((("user", "same"),), "x")
    other = Example((("user", "same"),), "different completion")
    assert split_of(ex, 0.1, 0.1) == split_of(other, 0.1, 0.1)


def test_shipped_samples_are_reproducible_and_large_enough(tmp_path: Path) -> None:
    from trainer.preference_data import read_preferences
    from trainer.samples import PREFERENCE_SAMPLES, SAMPLES, polite_closing, sample_path, write_samples

    write_samples(tmp_path)
    for name in [*SAMPLES, *PREFERENCE_SAMPLES]:
        assert (tmp_path / f"{name}.jsonl").read_bytes() == sample_path(name).read_bytes()
    for name in SAMPLES:
        assert len(load_examples(f"sample:{name}")[0]) >= 300
    pairs = read_preferences(sample_path("support-prefs"), "dpo")
    assert len(pairs) >= 300  # the preferred property holds in every chosen answer, in no rejected one
    assert all(polite_closing(p.chosen) and not polite_closing(p.rejected or "") for p in pairs)
