"""`platform review create/report` on the tiny model: a diverse deduplicated sample answered by both
versions in this process, blind sides, clear errors, and a report stored with both versions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import cli
from registry.store import Registry


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    assert "Traceback" not in result.output, result.output
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def two_versions(tmp_path_factory: pytest.TempPathFactory, tiny_base) -> Path:  # type: ignore[no-untyped-def]
    from testkit.adapters import make_adapters

    root = tmp_path_factory.mktemp("review-cli")
    registry = root / "registry"
    for folder in make_adapters(tiny_base.path, 2, 4, root, ["q_proj", "v_proj"]):
        code, out = run(
            "registry",
            "add",
            str(folder),
            "--name",
            "bot",
            "--base-model",
            "tiny",
            "--registry",
            str(registry),
        )
        assert code == 0, out
    return registry


def prompts(path: Path) -> Path:
    rows = [
        {"prompt": "hi " * (1 + i % 4 * 10) + f"#{i}", "completion": "ok", "topic": f"t{i % 3}"}
        for i in range(24)
    ]
    rows += rows[:5]  # duplicates are dropped from the sample
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_create_samples_both_versions_blind_then_reports(two_versions: Path, tmp_path: Path) -> None:
    data = prompts(tmp_path / "p.jsonl")
    reg = str(two_versions)
    code, out = run(
        "review", "create", "r1", "--versions", "bot@1", "bot:latest", "--data", str(data), "--samples", "8",
        "--max-new-tokens", "6", "--reviewers-per-item", "2", "--registry", reg,
    )  # fmt: skip
    assert code == 0, out
    review = Registry(reg).reviews().get("r1")
    assert (review.spec.version_a, review.spec.version_b, review.items) == ("bot@1", "bot@2", 8)
    items = Registry(reg).reviews().items("r1")
    assert len({it.prompt for it in items}) == 8  # no duplicate prompt
    assert {it.stratum for it in items} == {"short", "medium", "long", "very long"}  # every length band
    assert {it.a_on_left for it in items} == {True, False}  # sides shuffled
    assert all(isinstance(it.answer_a, str) and isinstance(it.answer_b, str) for it in items)
    code, out = run(
        "review", "create", "r2", "--versions", "bot@1", "bot@2", "--data", str(data), "--samples", "3",
        "--stratify", "topic", "--max-new-tokens", "2", "--registry", reg,
    )  # fmt: skip
    assert code == 0, out
    assert {it.stratum for it in Registry(reg).reviews().items("r2")} == {"t0", "t1", "t2"}

    code, out = run("review", "report", "r1", "--registry", reg)
    assert code == 0 and "no complete ratings yet" in out
    registry = Registry(reg)
    for who, choice in (("ann", "right"), ("bob", "tie")):
        index = registry.reviews().assign_next("r1", who)
        assert index == 0
        for c in ("correctness", "format", "tone"):
            for side in ("left", "right"):
                registry.reviews().rate(
                    "r1", 0, who, criterion=c, side=side, score=3 if side == "left" else 5
                )
        registry.reviews().rate("r1", 0, who, preference=choice)
    b_side = "b" if items[0].side_version("right") == "b" else "a"
    csv_file, png = tmp_path / "r.csv", tmp_path / "r.png"
    code, out = run(
        "review", "report", "r1", "--json", "--csv", str(csv_file), "--png", str(png), "--registry", reg
    )
    assert code == 0, out
    report = json.loads(out)
    wins = {"b": 1.0, "a": 0.0}[b_side]  # ann chose the right answer, bob a tie
    assert report["win_rate"]["mean"] == pytest.approx((wins + 0.5) / 2)
    assert report["ties"] == 1 and report["ties_rule"] == "ties count as half a win"
    assert png.read_bytes()[:4] == b"\x89PNG" and csv_file.read_text().count("\n") == 3
    code, out = run("registry", "show", "bot@2", "--registry", reg)
    assert code == 0 and "human review" in out and "review r1: preferred over bot@1" in out


def test_bad_rubric_traffic_and_versions_are_clear_errors(two_versions: Path, tmp_path: Path) -> None:
    data = prompts(tmp_path / "p.jsonl")
    bad = tmp_path / "rubric.yaml"
    bad.write_text("criteria:\n  - name: correctness\n    scale: 5-1\n    description: right?\n")
    base = ["review", "create", "r9", "--data", str(data), "--registry", str(two_versions)]
    code, out = run(*base, "--versions", "bot@1", "bot@2", "--rubric", str(bad))
    assert code == 2 and str(bad) in out and "criteria[0].scale" in out
    code, out = run(
        *base[:3], "--from-traffic", "bot@2", "--versions", "bot@1", "bot@2", "--registry", str(two_versions)
    )
    assert code == 2 and "no logged traffic for bot@2" in out and "--log-payloads bot" in out
    code, out = run(*base, "--versions", "bot@2", "bot:latest")
    assert code == 2 and "compare two different versions" in out
    code, out = run(*base, "--versions", "bot@1", "bot@7")
    assert code == 1 and "version 7" in out


def test_create_from_logged_traffic(two_versions: Path) -> None:
    from registry.payloads import PayloadRecord

    registry = Registry(two_versions)
    asked = {1: "where is my order?", 2: "cancel it please", 3: "where is my order?"}  # one repeat
    rows = [
        PayloadRecord(
            f"cmpl-{i}", 1000.0 + i, "bot", "bot@1" if i < 3 else "bot@2",
            json.dumps({"messages": [{"role": "user", "content": text}]}), "sure", "stop", "ok",
            0.1, 0.05, 4, 1,
        )
        for i, text in asked.items()
    ]  # fmt: skip
    registry.payloads().insert(rows)
    reg = str(two_versions)
    code, out = run(
        "review", "create", "rt", "--versions", "bot@1", "bot@2", "--from-traffic", "bot", "--samples", "5",
        "--max-new-tokens", "2", "--registry", reg,
    )  # fmt: skip
    assert code == 0, out
    review = Registry(reg).reviews().get("rt")
    assert review.spec.source == "traffic:bot"
    assert sorted(it.prompt for it in Registry(reg).reviews().items("rt")) == [
        "cancel it please",
        "where is my order?",
    ]
    code, out = run(
        "review", "create", "rt2", "--versions", "bot@1", "bot@2", "--from-traffic", "bot@2", "--samples", "5",
        "--max-new-tokens", "2", "--registry", reg,
    )  # fmt: skip
    assert code == 0, out
    assert [it.prompt for it in Registry(reg).reviews().items("rt2")] == [
        "where is my order?"
    ]  # what bot@2 answered
