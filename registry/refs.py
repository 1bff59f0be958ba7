"""References to adapter versions: `name` (latest), `name@3` (immutable), `name:prod` (alias).

Names and aliases are checked against a strict pattern before they touch a path: lowercase
letters, digits and `.-_`, starting with a letter or digit, at most 64 characters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from registry.errors import InvalidReferenceError

NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_REF_RE = re.compile(r"(?P<name>[^@:]+)(?:@(?P<version>[^@:]+)|:(?P<alias>[^@:]+))?")
_VERSION_RE = re.compile(r"[0-9]{1,10}")
MAX_VERSION = 2**31 - 1
"""Largest version number: every version fits a 32-bit signed integer (and SQLite's INTEGER)."""


def check_name(name: str, what: str = "name") -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise InvalidReferenceError(
            f"invalid {what} {name!r}: use 1-64 lowercase letters, digits, '.', '-' or '_', "
            "starting with a letter or digit"
        )
    return name


@dataclass(frozen=True)
class Ref:
    """A parsed reference; at most one of `version` and `alias` is set."""

    name: str
    version: int | None = None
    alias: str | None = None

    def __str__(self) -> str:
        if self.version is not None:
            return f"{self.name}@{self.version}"
        if self.alias is not None:
            return f"{self.name}:{self.alias}"
        return self.name


def parse_ref(text: str) -> Ref:
    """Parse `name`, `name@N` or `name:alias`; raise InvalidReferenceError with the reason otherwise."""
    if not isinstance(text, str):
        raise InvalidReferenceError(f"reference must be a string, got {type(text).__name__}")
    m = _REF_RE.fullmatch(text.strip())
    if not m:
        raise InvalidReferenceError(
            f"malformed reference {text!r}: expected name, name@VERSION or name:ALIAS"
        )
    name = check_name(m["name"])
    if m["version"] is not None:
        if not _VERSION_RE.fullmatch(m["version"]) or not 1 <= int(m["version"]) <= MAX_VERSION:
            raise InvalidReferenceError(
                f"malformed reference {text!r}: version must be an integer from 1 to {MAX_VERSION}"
            )
        return Ref(name, version=int(m["version"]))
    if m["alias"] is not None:
        return Ref(name, alias=check_name(m["alias"], "alias"))
    return Ref(name)
