"""A model as judge (`platform eval A B --judge ...`): both orders asked, verdicts added up per
version, unparsable replies counted and left out, agreement with a stored human review, and the
judge as an offline gate of a rollout."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import cli
from registry import reviews as rv
from registry.errors import NotFoundError
from registry.rubric import load_rubric
from registry.store import Registry
from testkit.adapters import random_adapter
from tests.registry.reviewing import finish_review
from tests.trainer.judge_server import Asked, ScriptedJudge, scripted_judge
from trainer.data import Example, load_examples
from trainer.judge import HTTPJudge, LocalJudge, judge_pair, parse_verdict, verdict_schema

ROWS = 6


@pytest.fixture
def judge() -> Iterator[ScriptedJudge]:
    with scripted_judge() as j:
        yield j


def _examples(n: int) -> list[Example]:
    return [Example((("user", f"Ticket {i}: where is parcel {i}?"),), "") for i in range(n)]


def test_parse_verdict_reads_only_stated_preferences() -> None:
    assert parse_verdict('{"correctness_1": 4, "preference": "2"}') == "2"
    assert parse_verdict('Sure! {"preference": "Tie"} hope that helps') == "tie"
    assert parse_verdict('{"preference": 1}') == "1"
    assert parse_verdict("preference: answer 2") == "2"
    for junk in ("", "1", "answer 1 is better", '{"preference": "A"}', '{"winner": "1"}', "{bad json"):
        assert parse_verdict(junk) is None, junk


def test_both_orders_are_asked_and_position_bias_cancels(judge: ScriptedJudge) -> None:
    """Every row goes to the judge twice, A's answer first and then B's; a judge that always picks
    answer 1 yields ties, one that reads the answers yields the winner; junk is counted."""
    rubric = load_rubric()
    examples = _examples(ROWS)
    a = [f"A says parcel {i} ships today." for i in range(ROWS)]
    b = [f"B says parcel {i} is {'GOOD' if i < 3 else 'late'}." for i in range(ROWS)]
    client = HTTPJudge(judge.url, "scripted", "sk-secret-judge-key", structured=False, max_tokens=64)

    judge.decide = lambda asked: '{"preference": "1"}'  # always the first answer
    report = judge_pair(client, rubric, examples, (a, b), ("v@1", "v@2"), "scripted")
    assert len(judge.asked) == 2 * ROWS
    for i in range(ROWS):
        orders = {(x.first, x.second) for x in judge.asked if f"parcel {i}?" in x.conversation}
        assert orders == {(a[i], b[i]), (b[i], a[i])}
    assert (report.wins, report.ties, report.losses, report.unparsable) == (0, ROWS, 0, 0)
    assert report.rate == pytest.approx(0.5)
    assert all(x.authorization == "Bearer sk-secret-judge-key" for x in judge.asked)
    assert all(x.response_format is None for x in judge.asked)  # another endpoint: parsed, not constrained

    def reads(asked: Asked) -> str:  # B's GOOD answers win, row 4 junk in one order, else A
        if "parcel 4" in asked.conversation and asked.first.startswith("B"):
            return "I cannot decide."
        good = "1" if "GOOD" in asked.first else "2" if "GOOD" in asked.second else None
        return json.dumps({"preference": good or ("1" if asked.first.startswith("A") else "2")})

    judge.decide = reads
    report = judge_pair(client, rubric, examples, (a, b), ("v@1", "v@2"), "scripted")
    assert [r.outcome for r in report.rows] == ["b", "b", "b", "a", None, "a"]
    assert (report.wins, report.ties, report.losses) == (3, 0, 2)
    assert (report.unparsable, report.unparsable_rows) == (1, 1)
    assert report.rate == pytest.approx(3 / 5)
    assert report.low <= report.rate <= report.high
    assert "unparsable 1 of 12 replies (1 rows left out)" in report.summary()


def test_in_process_judge_answers_the_schema_with_the_tiny_model(tiny_base) -> None:  # type: ignore[no-untyped-def]
    """The tiny random model as judge in this process: decoding constrained by the verdict schema,
    so even its junk is a well-formed verdict on every criterion."""
    rubric = load_rubric()
    examples = _examples(2)
    report = judge_pair(
        LocalJudge("base", None, max_tokens=256),
        rubric,
        examples,
        (["yes", "no"], ["maybe", "never"]),
        ("base", "base"),
        "base",
    )
    assert report.unparsable == 0
    keys = set(verdict_schema(rubric)["properties"])
    for row in report.rows:
        for reply in (row.a_first, row.b_first):
            verdict = json.loads(reply)
            assert set(verdict) == keys and verdict["preference"] in ("1", "2", "tie")


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str], Path]:
    """Two random tiny versions in a registry, and a data file of ROWS rows."""
    root = tmp_path_factory.mktemp("judge")
    from registry.basemodels import resolve_base_model

    base = resolve_base_model("tiny")
    lineage = {"base_model": base.id, "base_model_sha256": base.weights_sha256, "source": "random"}
    reg = Registry(root / "registry")
    refs = [
        reg.push("bot", random_adapter(root / f"a{r}", r, ["q_proj", "v_proj"]), lineage).ref for r in (4, 8)
    ]
    data = root / "rows.jsonl"
    data.write_text(
        "".join(
            json.dumps({"prompt": f"Ticket {i}: parcel {i}?", "completion": "ok"}) + "\n" for i in range(ROWS)
        )
    )
    return root / "registry", refs, data


def _answers(
    registry: Path, refs: list[str], data: Path, max_new_tokens: int, max_examples: int = 0
) -> dict[str, list[str]]:
    from trainer.evaluate_versions import evaluate_refs

    results, _ = evaluate_refs(
        refs, str(data), str(registry), max_new_tokens=max_new_tokens, max_examples=max_examples
    )
    return {r: results[r].predictions for r in refs}


def _prefer(answers: dict[str, list[str]], wanted: dict[int, str], refs: list[str]) -> object:
    """A judge that prefers, on row i, the version `wanted[i]` (`a`, `b`, `tie`) by its answer."""

    def decide(asked: Asked) -> str:
        row = int(asked.conversation.split("parcel ")[1].split("?")[0])
        want = wanted[row]
        if want == "tie":
            return '{"preference": "tie"}'
        text = answers[refs[0] if want == "a" else refs[1]][row]
        return json.dumps({"preference": "1" if asked.first == text else "2"})

    return decide


def test_eval_judge_agrees_with_a_stored_review(pair, judge: ScriptedJudge, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """`platform eval A B --judge-url`: the table, the judge's win/tie/loss, and Cohen's kappa with
    the people who reviewed the same pair (on the rows both saw)."""
    registry, refs, data = pair
    answers = _answers(registry, refs, data, 8)
    assert all(x != y for x, y in zip(*answers.values(), strict=True)), "the judge needs distinct answers"
    judge.decide = _prefer(answers, {0: "a", 1: "a", 2: "b", 3: "b", 4: "tie", 5: "b"}, refs)  # type: ignore[assignment]
    reg = Registry(registry)
    examples, _, _ = load_examples(str(data))
    items = [rv.NewItem(ex.prompt_messages, "x", "y", i % 2 == 0) for i, ex in enumerate(examples[:5])]
    # the people reviewed B against A (sides swapped), rows 0-4: they agree on 0, 2, 3, 4, not on 1
    reg.reviews().create("people", rv.ReviewSpec(refs[1], refs[0], load_rubric().to_dict()), items)
    finish_review(reg, "people", preferences=["b", "a", "a", "a", "tie"])

    args = ["eval", *refs, "--data", str(data), "--max-new-tokens", "8", "--registry", str(registry)]
    args += ["--judge-url", judge.url, "--judge-model", "scripted", "--report-dir", str(tmp_path)]
    res = CliRunner().invoke(cli, args, env={"LORA_PLATFORM_JUDGE_KEY": "sk-never-printed"})
    assert res.exit_code == 0, res.output
    assert f"{refs[1]} vs {refs[0]}: win 3 / tie 1 / loss 2, unparsable 0 of 12" in res.output
    # people (a-orientation): a, b, b, b, tie; judge: a, a, b, b, tie -> 4 of 5 agree
    from sklearn.metrics import cohen_kappa_score

    kappa = cohen_kappa_score(["a", "b", "b", "b", "tie"], ["a", "a", "b", "b", "tie"])
    assert f"review people, 5 shared rows): Cohen's kappa {kappa:.3f}, same outcome on 80%" in res.output
    assert "sk-never-printed" not in res.output
    assert {x.authorization for x in judge.asked} == {"Bearer sk-never-printed"}
    saved = json.loads((tmp_path / "judge.json").read_text())
    assert saved["agreement"][0]["shared"] == 5 and len(saved["rows"]) == ROWS

    bad = CliRunner().invoke(cli, ["eval", refs[0], "--data", str(data), "--judge", "base"])
    assert bad.exit_code == 2 and "a judge compares two versions" in bad.output
    bad = CliRunner().invoke(cli, ["eval", *refs, "--data", str(data), "--judge-url", judge.url])
    assert bad.exit_code == 2 and "--judge-model" in bad.output


def test_judge_gate_blocks_a_rollout(pair, judge: ScriptedJudge) -> None:  # type: ignore[no-untyped-def]
    """`rollout start --eval-gate judge>=0.5 --judge-url ...`: a candidate the judge likes less than
    the baseline is stopped before the rollout exists; one it likes as much starts."""
    registry, refs, data = pair
    answers = _answers(registry, refs, data, 64, 3)  # what the pre-flight evaluation generates
    reg = Registry(registry)

    def start(*gates: str) -> str:
        args = ["rollout", "start", "bot", "--candidate", refs[1], "--baseline", refs[0]]
        args += ["--eval-data", str(data), "--registry", str(registry), "--judge-url", judge.url]
        args += ["--judge-model", "scripted", "--eval-max-examples", "3"]
        for g in gates:
            args += ["--eval-gate", g]
        out = CliRunner().invoke(cli, args)
        assert "Traceback" not in out.output, out.output
        return f"{out.exit_code}\n{out.output}"

    judge.decide = _prefer(answers, {0: "a", 1: "a", 2: "b"}, refs)  # type: ignore[assignment]
    refused = start("judge>=0.5")
    assert refused.startswith("1\n") and "offline gate failed, rollout not started" in refused
    assert "FAIL: judge 0.3333" in refused
    with pytest.raises(NotFoundError):
        reg.rollouts().get("bot")
    judge.decide = _prefer(answers, {i: "tie" for i in range(3)}, refs)  # type: ignore[assignment]
    started = start("judge>=0.5", "exact_match>=baseline-1")
    assert started.startswith("0\n") and "pass: judge 0.5000" in started, started
    assert reg.rollouts().get("bot").spec.candidate == refs[1]
    missing = CliRunner().invoke(
        cli,
        [
            "rollout",
            "start",
            "bot",
            "--candidate",
            refs[1],
            "--eval-data",
            str(data),
            "--eval-gate",
            "judge>=0.5",
        ],
    )
    assert missing.exit_code == 2 and "--judge" in missing.output


def test_judge_through_platform_serve(server, adapters, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The tiny model behind the session's real `platform serve` as judge: asked as any endpoint
    (free text) its junk is counted unparsable, every reply; asked as our server (`--judge REF
    --server`), `response_format` json_schema makes every reply a verdict."""
    registry, refs = adapters
    data = tmp_path / "rows.jsonl"
    data.write_text(
        "".join(json.dumps({"prompt": f"Parcel {i}?", "completion": "ok"}) + "\n" for i in range(2))
    )
    # one short criterion: the judge's prompt and reply fit the tiny model's 512 positions
    rubric = tmp_path / "rubric.yaml"
    rubric.write_text(
        "criteria:\n  - name: ok\n    scale: 1-2\n    description: Right?\n"
        "preference:\n  description: Which is better?\n"
    )
    common = ["eval", refs["support"], refs["contact"], "--data", str(data), "--server", server.url]
    common += ["--max-new-tokens", "4", "--registry", str(registry), "--judge-max-tokens", "128"]
    common += ["--judge-rubric", str(rubric)]

    free = CliRunner().invoke(
        cli, [*common, "--judge-url", server.url, "--judge-model", refs["support"], "--judge-free"]
    )
    assert free.exit_code == 0, free.output
    assert "unparsable 4 of 4 replies (2 rows left out)" in free.output
    constrained = CliRunner().invoke(
        cli, [*common, "--judge", refs["support"], "--report-dir", str(tmp_path)]
    )
    assert constrained.exit_code == 0, constrained.output
    assert "unparsable 0 of 4 replies" in constrained.output
    rows = json.loads((tmp_path / "judge.json").read_text())["rows"]
    assert all(
        json.loads(r[k])["preference"] in ("1", "2", "tie") for r in rows for k in ("a_first", "b_first")
    )
