"""Turn the packages' errors into click errors: a message and exit 1, never a traceback."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import click

from registry.errors import RegistryError

F = TypeVar("F", bound=Callable[..., Any])


def _known_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [RegistryError]
    try:
        from trainer.errors import TrainerError

        errors.append(TrainerError)
    except ImportError:  # trainer extras absent in a serving-only install
        pass
    try:
        from serving.errors import ServingError

        errors.append(ServingError)
    except ImportError:
        pass
    return tuple(errors)


def handle_errors(func: F) -> F:
    """Decorator: our exceptions become `click.ClickException` with the same message."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except _known_errors() as exc:
            raise click.ClickException(str(exc)) from exc

    return wrapper  # type: ignore[return-value]
