"""`platform eval REF... --lm-eval TASKS`: lm-evaluation-harness tasks, recorded with each version."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click
from rich.console import Console

from cli.tables import Record, print_records

F = TypeVar("F", bound=Callable[..., Any])


def lm_eval_options(func: F) -> F:
    """`--lm-eval TASKS`, `--lm-eval-tasks-dir DIR`, `--lm-eval-fewshot K`, `--lm-eval-chat`."""
    for option in reversed(
        [
            click.option(
                "--lm-eval",
                "lm_eval_tasks",
                help="Run these lm-evaluation-harness tasks (comma-separated) on each version and "
                "record the scores with it (offline: tasks must read local files).",
            ),
            click.option(
                "--lm-eval-tasks-dir",
                type=click.Path(file_okay=False),
                help="Folder of lm-eval task YAMLs (lm-eval's --include_path), e.g. tasks with "
                "`dataset_path: json` and local `data_files`.",
            ),
            click.option(
                "--lm-eval-fewshot",
                type=click.IntRange(min=0),
                help="Few-shot examples per prompt (default: the task's).",
            ),
            click.option(
                "--lm-eval-chat",
                is_flag=True,
                help="Apply the chat template (through --server: local-chat-completions).",
            ),
        ]
    ):
        func = option(func)
    return func


def parse_tasks(text: str) -> list[str]:
    tasks = [t.strip() for t in text.split(",") if t.strip()]
    if not tasks:
        raise click.BadParameter(
            "give one or more task names, e.g. --lm-eval my_task,other_task", param_hint="--lm-eval"
        )
    return tasks


def run_lm_eval_refs(
    console: Console,
    refs: list[str],
    tasks_text: str,
    registry_root: str | None,
    *,
    server: str | None,
    tasks_dir: str | None,
    limit: int,
    fewshot: int | None,
    chat: bool,
) -> None:
    """Run the tasks on every ref, record each version's scores, print one table."""
    from trainer.lm_harness import record_run, run_lm_eval

    tasks = parse_tasks(tasks_text)
    columns: dict[str, dict[str, float]] = {}
    for ref in refs:
        run = record_run(
            run_lm_eval(
                ref,
                tasks,
                registry_root,
                server=server,
                tasks_dir=tasks_dir,
                limit=limit or None,
                num_fewshot=fewshot,
                chat=chat,
            ),
            registry_root,
        )
        columns[ref] = {f"{t} {m}": v for t, metrics in run.results.items() for m, v in metrics.items()}
        if run.evaluation_id is not None:
            console.print(f"recorded as evaluation {run.evaluation_id} of {ref} ({run.mode})")
    print_records(console, f"lm-eval {', '.join(tasks)}", _records(columns))


def _records(columns: dict[str, dict[str, float]]) -> list[Record]:
    keys = list(dict.fromkeys(k for c in columns.values() for k in c))
    return [
        {"task metric": k} | {ref: "-" if k not in c else f"{c[k]:.4f}" for ref, c in columns.items()}
        for k in keys
    ]
