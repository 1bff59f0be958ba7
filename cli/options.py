"""Options several commands share: where the registry is, and how long something lasts."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import click

if TYPE_CHECKING:
    from registry.store import Registry

F = TypeVar("F", bound=Callable[..., Any])
ARTIFACTS_ENV = "LORA_PLATFORM_ARTIFACTS"


def _set_artifacts(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    # the registry reads LORA_PLATFORM_ARTIFACTS when it opens its artifact store, so every code
    # path a command takes (training's push, evaluation, serving) sees the flag the same way;
    # the variable is put back when the command ends (commands invoked in-process leave no trace)
    if not value:
        return
    before = os.environ.get(ARTIFACTS_ENV)
    os.environ[ARTIFACTS_ENV] = value

    def restore() -> None:
        if before is None:
            os.environ.pop(ARTIFACTS_ENV, None)
        else:
            os.environ[ARTIFACTS_ENV] = before

    ctx.call_on_close(restore)


def registry_options(func: F) -> F:
    """`--registry FOLDER|URL` (passed as `registry_root`) and `--artifacts URL`."""
    func = click.option(
        "--artifacts",
        envvar="LORA_PLATFORM_ARTIFACTS",
        expose_value=False,
        callback=_set_artifacts,
        help="Artifact store of a PostgreSQL registry: a shared folder or an fsspec URL (s3://...).",
    )(func)
    return click.option(
        "--registry",
        "registry_root",
        envvar="LORA_PLATFORM_REGISTRY",
        help="Registry: a folder (default ~/.cache/lora-platform/registry) or postgresql://user:pw@host:port/db.",
    )(func)


def open_registry(location: str | None) -> Registry:
    """The registry `--registry` names (imported on use: `platform --help` stays fast)."""
    from registry.store import Registry

    return Registry(location)


class Duration(click.ParamType[float, Any]):
    """A length of time in seconds (float), the one grammar of every option that takes one: a number
    with an optional unit, `ms`, `s` (the default), `m`, `h`, `d` or `w` (`500ms`, `90`, `1.5m`, `2h`,
    `1d`, `1w`). `positive=True`: zero is refused too. Bad input is a usage error (exit 2) naming the
    option. Hand-written: click has no duration type, and a library (pytimeparse) would add a grammar
    of its own for six units."""

    name = "duration"
    UNITS: ClassVar[dict[str, float]] = {
        "ms": 0.001,
        "s": 1.0,
        "m": 60.0,
        "h": 3600.0,
        "d": 86400.0,
        "w": 7 * 86400.0,
    }
    _PATTERN = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h|d|w)?\s*", re.IGNORECASE)

    def __init__(self, positive: bool = False) -> None:
        self.positive = positive

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            seconds = float(value)
        else:
            match = self._PATTERN.fullmatch(str(value))
            if match is None:
                self.fail(f"{value!r} is not a duration; use e.g. 500ms, 90s, 10m, 2h, 1d or 1w", param, ctx)
            seconds = float(match.group(1)) * self.UNITS[(match.group(2) or "s").lower()]
        if seconds < 0 or (self.positive and seconds == 0):
            self.fail(
                f"{value!r}: a duration must be {'more than' if self.positive else 'at least'} 0", param, ctx
            )
        return seconds


DURATION = Duration()
"""Zero or more seconds."""
POSITIVE_DURATION = Duration(positive=True)
"""More than zero seconds."""
