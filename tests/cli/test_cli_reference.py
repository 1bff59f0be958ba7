"""The docs' CLI reference (its at-a-glance block) names only commands and options that exist."""

from __future__ import annotations

import re
from pathlib import Path

import click

from cli.main import cli

REFERENCE = Path(__file__).parents[2] / "docs" / "reference" / "cli.md"


def reference_lines() -> list[str]:
    text = REFERENCE.read_text()
    block = text.split("## At a glance", 1)[1].split("```", 2)[1]
    lines, current = [], ""
    for line in block.splitlines():
        if line.startswith("platform "):
            if current:
                lines.append(current)
            current = line
        elif line.startswith(" ") and current:
            current += " " + line.split("#", 1)[0]
    return [*lines, current] if current else lines


def test_every_command_and_option_in_the_cli_reference_exists() -> None:
    lines = reference_lines()
    assert len(lines) >= 20
    for line in lines:
        words = line.split("#", 1)[0].split()[1:]
        command: click.Command = cli
        while isinstance(command, click.Group) and words and words[0] in command.commands:
            command = command.commands[words.pop(0)]
        assert not isinstance(command, click.Group), f"the reference names a group without a command: {line}"
        known = {opt for p in command.params for opt in getattr(p, "opts", [])}
        for option in re.findall(r"--[a-z][a-z-]*", line):
            assert option in known, f"{line}: {option} is not an option of `{command.name}`"
