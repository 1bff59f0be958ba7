"""Review sets in the catalog (both backends): K reviewers per item, answers saved one at a time,
skips free a place, preferred answers and summaries come back per version."""

from __future__ import annotations

import pytest

from registry import reviews as rv
from registry.errors import ConflictError, NotFoundError
from registry.rubric import load_rubric
from registry.store import Registry


def _review(reg: Registry, n: int = 3, k: int = 2) -> rv.ReviewSet:
    spec = rv.ReviewSpec("bot@1", "bot@2", load_rubric().to_dict(), reviewers_per_item=k, source="t.jsonl")
    items = [
        rv.NewItem([{"role": "user", "content": f"q{i}"}], f"a{i}", f"b{i}", a_on_left=i % 2 == 0)
        for i in range(n)
    ]
    return reg.reviews().create("r1", spec, items, now=1.0)


def _complete(reg: Registry, index: int, who: str, preference: str) -> rv.Rating:
    last = None
    for c in ("correctness", "format", "tone"):
        for side in ("left", "right"):
            last = reg.reviews().rate("r1", index, who, criterion=c, side=side, score=4)
    assert last is not None and not last.complete
    return reg.reviews().rate("r1", index, who, preference=preference)


def test_each_item_goes_to_k_reviewers_and_every_answer_is_kept(registry_location: str) -> None:
    reg = Registry(registry_location)
    _review(reg, n=2, k=2)
    assert reg.reviews().assign_next("r1", "ann") == 0
    assert reg.reviews().assign_next("r1", "ann") == 0  # unfinished: the same item again (resume)
    assert reg.reviews().assign_next("r1", "bob") == 0
    assert reg.reviews().assign_next("r1", "cid") == 1  # item 0 has its 2 reviewers
    first = reg.reviews().rate("r1", 0, "ann", criterion="tone", side="left", score=5)
    assert first.scores == {"tone": {"a": 5}} and not first.complete  # item 0 shows A on the left
    assert reg.reviews().rating("r1", 0, "ann") == first  # saved at once, before the item is finished
    done = _complete(reg, 0, "ann", "right")
    assert done.complete and done.preference == "b" and done.scores["tone"] == {"a": 4, "b": 4}
    assert reg.reviews().assign_next("r1", "ann") == 1
    assert reg.reviews().assign_next("r1", "ann") == 1
    reg.reviews().skip("r1", 1, "ann")  # skipped: ann gets nothing new, and item 1 has a free place again
    assert reg.reviews().assign_next("r1", "ann") is None
    assert reg.reviews().assign_next("r1", "dan") == 1
    assert reg.reviews().history("r1", "ann") == [0, 1]
    p = reg.reviews().progress("r1", "ann")
    assert (p.complete, p.target, p.reviewer_complete, p.reviewer_skipped) == (1, 4, 1, 1)
    assert p.reviewers == ["ann", "bob", "cid", "dan"]


def test_bad_ratings_and_names_are_refused(registry_location: str) -> None:
    reg = Registry(registry_location)
    _review(reg)
    with pytest.raises(ConflictError):
        _review(reg)
    with pytest.raises(ConflictError):  # not handed to eve
        reg.reviews().rate("r1", 0, "eve", preference="tie")
    reg.reviews().assign_next("r1", "eve")
    for kwargs in (
        {"criterion": "speed", "side": "left", "score": 3},
        {"criterion": "tone", "side": "middle", "score": 3},
        {"criterion": "tone", "side": "left", "score": 9},
        {"preference": "A"},
    ):
        with pytest.raises(rv.RatingError):
            reg.reviews().rate("r1", 0, "eve", **kwargs)  # type: ignore[arg-type]
    with pytest.raises(rv.RatingError):
        reg.reviews().assign_next("r1", " ")
    with pytest.raises(NotFoundError):
        reg.reviews().item("r1", 99)
    with pytest.raises(NotFoundError):
        reg.reviews().assign_next("nope", "eve")


def test_preferred_answers_and_summaries_per_version(registry_location: str) -> None:
    reg = Registry(registry_location)
    _review(reg, n=3, k=2)
    for who in ("ann", "bob"):
        for _ in range(3):
            index = reg.reviews().assign_next("r1", who)
            assert index is not None
            # item 0: both prefer B; item 1: split (no majority); item 2: both tie
            choice = {0: "b", 1: "a" if who == "ann" else "b", 2: "tie"}[index]
            it = reg.reviews().item("r1", index)
            side = "tie" if choice == "tie" else ("left" if it.side_version("left") == choice else "right")
            _complete(reg, index, who, side)
    best = reg.reviews().preferred("r1")
    assert [(p.item, p.answer, p.version, p.rejected, p.votes) for p in best] == [(0, "b0", "bot@2", "a0", 2)]
    assert best[0].messages == [{"role": "user", "content": "q0"}]
    assert reg.reviews().preferred(version="bot@1") == []
    reg.reviews().attach_summary("r1", {"win_rate": 0.5})
    assert reg.reviews().summaries_for("bot@2") == [
        {"review": "r1", "role": "b", "against": "bot@1", "win_rate": 0.5}
    ]
    assert reg.reviews().summaries_for("bot@1")[0]["role"] == "a"
    assert reg.reviews().summaries_for("bot@3") == []


def test_export_reviewed_adds_the_preferred_answers_of_the_name(registry_location: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json

    from click.testing import CliRunner

    from cli.main import cli

    reg = Registry(registry_location)
    _review(reg, n=2, k=1)
    for who, index, choice in (("ann", 0, "b"), ("bob", 1, "a")):
        assert reg.reviews().assign_next("r1", who) == index
        it = reg.reviews().item("r1", index)
        _complete(reg, index, who, "left" if it.side_version("left") == choice else "right")
    out = tmp_path / "reviewed.jsonl"
    args = ["data", "export", "bot", "--reviewed", "--out", str(out), "--registry", registry_location]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["messages"][-1]["content"] for r in rows) == ["a1", "b0"]  # each item's preferred answer
    assert rows[0]["messages"][0]["role"] == "user"
    other = CliRunner().invoke(cli, [*args[:2], "other", *args[3:]])
    assert other.exit_code != 0 and "no rows" in other.output  # nothing reviewed for another name
