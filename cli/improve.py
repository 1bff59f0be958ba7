"""`platform improve NAME`: export -> train -> offline gates -> canary rollout, as one pipeline."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import click
from rich.console import Console
from rich.text import Text

from cli.errors import handle_errors
from cli.judge_options import judge_options
from cli.options import DURATION, POSITIVE_DURATION, registry_options
from cli.rollout import parse_steps

if TYPE_CHECKING:
    from trainer.judge import JudgeSpec

console = Console()


@click.command("improve")
@click.argument("name")
@click.option("--alias", default="prod", show_default=True, help="The serving alias to improve on.")
@click.option(
    "--objective",
    type=click.Choice(["auto", "sft", "dpo", "kto"]),
    default="auto",
    show_default=True,
    help="auto: DPO on pairs if there are enough, else KTO on labelled rows, else SFT on liked answers.",
)
@click.option(
    "--min-rows", default=16, show_default=True, type=click.IntRange(1), help="Fewer new rows: skip cleanly."
)
@click.option("--eval-data", help="Held-out rows for the offline gates (default: the serving version's).")
@click.option(
    "--eval-gate",
    "eval_gates",
    multiple=True,
    help="Offline gate, repeatable (default exact_match>=baseline-0.02 and general>=baseline-0.02, the "
    "general-capability set, so a candidate that forgot is stopped; with --judge or --judge-url, "
    "judge>=0.5 is added unless a judge gate is named).",
)
@click.option(
    "--eval-max-examples",
    default=0,
    type=click.IntRange(0),
    help="Evaluate only the first N rows (and N general-set items; 0: all rows, 100 items).",
)
@click.option(
    "--shadow-first/--no-shadow-first", default=True, show_default=True, help="Rollout shadow phase."
)
@click.option(
    "--steps", default="5,25,50,100", show_default=True, callback=parse_steps, help="Rollout weights, %."
)
@click.option(
    "--interval", default="60s", show_default=True, type=DURATION, help="Rollout decision interval."
)
@click.option("--output-dir", default="runs", show_default=True, help="Where the export and the run go.")
@click.option(
    "--review",
    "review_samples",
    default=0,
    type=click.IntRange(0),
    help="Also make a blind human review set of N real prompts (serving vs candidate) before the rollout.",
)
@click.option("--on-drift", is_flag=True, help="Run only when `platform monitor` sees a signal move.")
@click.option("--dry-run", is_flag=True, help="Print the plan with the counts; change nothing.")
@click.option(
    "--every",
    type=POSITIVE_DURATION,
    help="Run again every this long (e.g. 24h), as a long-running command; without it: once.",
)
@click.option("--set", "overrides", multiple=True, help="Training setting key=value, repeatable.")
@judge_options
@registry_options
@handle_errors
def improve_cmd(
    name: str,
    alias: str,
    objective: str,
    min_rows: int,
    eval_data: str | None,
    eval_gates: tuple[str, ...],
    eval_max_examples: int,
    shadow_first: bool,
    steps: tuple[float, ...],
    interval: float,
    output_dir: str,
    review_samples: int,
    on_drift: bool,
    dry_run: bool,
    every: float | None,
    overrides: tuple[str, ...],
    judge: JudgeSpec | None,
    registry_root: str | None,
) -> None:
    """Improve the version NAME:ALIAS serves from what arrived since it was published: export the
    new feedback and review choices, train from it, check offline gates against it, and start a
    canary rollout. Too little new data is a clean skip (exit 0); a failed step leaves the serving
    version untouched (exit 1)."""
    from pipeline.improve import ImproveError, ImproveSettings, improve, make_plan

    settings = ImproveSettings(
        alias=alias,
        objective=objective,
        min_rows=min_rows,
        eval_data=eval_data,
        eval_gates=eval_gates or ImproveSettings.eval_gates,
        eval_max_examples=eval_max_examples,
        shadow_first=shadow_first,
        steps=steps,
        interval_s=interval,
        output_dir=output_dir,
        train_overrides=overrides,
        review_samples=review_samples,
        on_drift=on_drift,
        judge=judge,
    )
    while True:
        if dry_run:
            plan = make_plan(name, settings, registry_root)
            for line in plan.describe():
                console.print(Text(line), soft_wrap=True)
            return
        outcome = improve(name, settings, registry_root, Console(stderr=True))
        for step in outcome.steps:
            console.print(Text(f"{step['step']}: {step['outcome']}"), soft_wrap=True)
        if outcome.stopped:
            console.print(Text(outcome.stopped), soft_wrap=True)
        if outcome.candidate and not outcome.stopped:
            console.print(Text(f"rollout {name}: {outcome.plan.serving} -> {outcome.candidate} started"))
        elif outcome.candidate:
            raise ImproveError(outcome.stopped or "stopped")
        if every is None:
            return
        time.sleep(every)
