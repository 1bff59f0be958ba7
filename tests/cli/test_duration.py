"""One duration grammar for every CLI option that takes one (cli/options.py `Duration`): `--max-wait 1d`
is accepted like `--since 1d`, and bad input is exit 2 naming the option."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from cli.main import cli
from cli.options import Duration

DURATION_OPTIONS = {
    ("rollout", "start"): ["--interval", "--max-wait"],
    ("rollout", "watch"): ["--max-seconds"],
    ("data", "export"): ["--since"],
    ("monitor",): ["--reference", "--window"],
    ("registry", "gc"): ["--older-than"],
    ("improve",): ["--interval", "--every"],
}


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("90", 90), ("90s", 90), ("1.5m", 90), ("2h", 7200), ("1d", 86400), ("1w", 604800)],
)
def test_one_grammar(text: str, seconds: float) -> None:
    assert Duration().convert(text, None, None) == pytest.approx(seconds)
    assert Duration().convert(f" {text.upper()} ", None, None) == pytest.approx(seconds)


def test_every_duration_option_has_the_one_type() -> None:
    for path, options in DURATION_OPTIONS.items():
        command: click.Command = cli
        for word in path:
            assert isinstance(command, click.Group)
            command = command.commands[word]
        types = {opt: p.type for p in command.params for opt in getattr(p, "opts", [])}
        for option in options:
            assert isinstance(types[option], Duration), f"{' '.join(path)} {option}"


def test_max_wait_takes_days_like_since(tmp_path: Path) -> None:
    registry = ["--registry", str(tmp_path / "registry")]
    result = CliRunner().invoke(
        cli, ["rollout", "start", "support", "--candidate", "support@2", "--max-wait", "1d", *registry]
    )
    # parsed: the command goes on and stops at the empty registry (exit 1), not at the option (exit 2)
    assert result.exit_code == 1, result.output
    assert "--max-wait" not in result.output


@pytest.mark.parametrize(
    "args",
    [
        ["rollout", "start", "support", "--candidate", "support@2", "--max-wait", "1x"],
        ["rollout", "start", "support", "--candidate", "support@2", "--interval", "-5s"],
        ["rollout", "watch", "--max-seconds", "soon"],
        ["data", "export", "support", "--out", "x.jsonl", "--since", "0d"],
        ["monitor", "support", "--window", "a day"],
        ["registry", "gc", "--older-than", "1 fortnight"],
    ],
)
def test_bad_durations_are_usage_errors_naming_the_option(tmp_path: Path, args: list[str]) -> None:
    option = next(a for a in args if a.startswith("--") and a != "--candidate" and a != "--out")
    result = CliRunner().invoke(cli, [*args, "--registry", str(tmp_path / "registry")])
    assert result.exit_code == 2, result.output
    assert option in result.output and "Traceback" not in result.output
