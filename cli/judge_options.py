"""The model-judge options `platform eval`, `platform rollout start` and `platform improve` share."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from trainer.judge import JudgeSpec

F = TypeVar("F", bound=Callable[..., Any])
KEY_ENV = "LORA_PLATFORM_JUDGE_KEY"


def judge_options(func: F) -> F:
    """`--judge REF`, `--judge-url URL`, `--judge-model`, `--judge-key`, `--judge-rubric`,
    `--judge-structured/--judge-free`, `--judge-max-tokens`, passed on as `judge: JudgeSpec | None`."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        kwargs["judge"] = judge_spec(
            kwargs.pop("judge_ref"),
            kwargs.pop("judge_url"),
            kwargs.pop("judge_model"),
            kwargs.pop("judge_key"),
            kwargs.pop("judge_rubric"),
            kwargs.pop("judge_structured"),
            kwargs.pop("judge_max_tokens"),
            kwargs.get("server"),
        )
        return func(*args, **kwargs)

    options = [
        click.option(
            "--judge",
            "judge_ref",
            metavar="REF",
            help="A model as judge: a registry version or `base` compares the two versions' answers "
            "(in this process, or through --server when the command has one).",
        ),
        click.option(
            "--judge-url",
            metavar="URL",
            help="A model as judge at any OpenAI-compatible endpoint (with --judge-model).",
        ),
        click.option("--judge-model", metavar="NAME", help="With --judge-url: the model to ask."),
        click.option(
            "--judge-key",
            envvar=KEY_ENV,
            metavar="KEY",
            help=f"With --judge-url: the API key (or ${KEY_ENV}); never printed.",
        ),
        click.option(
            "--judge-rubric",
            type=click.Path(dir_okay=False, exists=True, path_type=Path),
            help="Rubric YAML for the judge (default: the rubric of a human review of the same pair, "
            "else the shipped one).",
        ),
        click.option(
            "--judge-structured/--judge-free",
            default=None,
            help="Ask --judge-url for schema-constrained JSON (response_format json_schema); default: "
            "only for --judge REF (our server or in-process), other endpoints' replies are parsed.",
        ),
        click.option(
            "--judge-max-tokens",
            default=256,
            show_default=True,
            type=click.IntRange(16),
            help="Most tokens of one verdict.",
        ),
    ]
    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper  # type: ignore[return-value]


def judge_spec(
    ref: str | None,
    url: str | None,
    model: str | None,
    key: str | None,
    rubric: Path | None,
    structured: bool | None,
    max_tokens: int,
    server: str | None,
) -> JudgeSpec | None:
    """The judge the options name (None: none); a usage error for a contradictory set."""
    from trainer.judge import JudgeSpec

    if ref and url:
        raise click.UsageError("give --judge REF or --judge-url URL, not both")
    if url and not model:
        raise click.BadParameter("--judge-url needs --judge-model NAME (the model to ask there)")
    if not ref and not url:
        if model or rubric:
            raise click.UsageError("--judge-model/--judge-rubric need --judge REF or --judge-url URL")
        return None
    if rubric is not None:
        from registry.rubric import RubricError, load_rubric

        try:
            load_rubric(rubric)
        except RubricError as exc:
            raise click.BadParameter(str(exc), param_hint="--judge-rubric") from None
    return JudgeSpec(ref, url, model, key, server if ref else None, structured, rubric, max_tokens)
