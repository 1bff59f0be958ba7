"""Turn the packages' errors into click errors: a message and exit 1, never a traceback."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import click

from registry.errors import RegistryError
from serving.errors import ServingError
from trainer.errors import ConfigError, TrainerError

F = TypeVar("F", bound=Callable[..., Any])


class BadConfigError(click.ClickException):
    """A training config (file, flags or overrides) the run cannot use: bad arguments, so exit 2."""

    exit_code = 2


def handle_errors(func: F) -> F:
    """Decorator: our exceptions become `click.ClickException` with the same message (exit 1), a
    bad training config `BadConfigError` (exit 2, like click's own bad-argument errors)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ConfigError as exc:
            raise BadConfigError(str(exc)) from exc
        except (RegistryError, TrainerError, ServingError) as exc:
            raise click.ClickException(str(exc)) from exc

    return wrapper  # type: ignore[return-value]
