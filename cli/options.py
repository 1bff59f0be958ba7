"""Options several commands share: where the registry is."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

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
