"""`platform demo`: the main job. Train on the embedded default, serve, query base and adapter.

The engine's own output (vLLM, Triton, NUMA and deprecation warnings) goes to `serve.log` in the
run folder, named at the end; `-v` shows it in the terminal instead.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from cli.errors import handle_errors
from cli.options import registry_options
from cli.train import print_run

console = Console()


@click.command("demo")
@registry_options
@click.option("--output-dir", default="runs", show_default=True)
@click.option("--questions", default=3, show_default=True, help="Held-out prompts to ask both models.")
@click.option("-v", "--verbose", is_flag=True, help="Show the engine's log here instead of in serve.log.")
@handle_errors
def demo_cmd(registry_root: str | None, output_dir: str, questions: int, verbose: bool) -> None:
    """Train the default adapter, start `platform serve` in-process, ask base and adapter side by side."""
    from rich.console import Console as StderrConsole

    from serving.settings import load_settings
    from trainer.config import load_config, shipped_config
    from trainer.publish import publish
    from trainer.recipe import run

    # the sample's own config: fast settings, not the defaults meant for real data
    config = load_config(shipped_config("support-tickets"), [f"output_dir={output_dir}"])
    result = run(config, console=StderrConsole(stderr=True))
    result.registry_ref = publish(result, registry_root)
    print_run(result)
    console.print(
        f"\n[bold]serving[/] {config.base_model} + {result.registry_ref} on vLLM; asking both through the OpenAI API"
    )
    settings = load_settings(
        None, base_model=config.base_model, registry=registry_root, port=0, max_model_len=2048
    )
    prompts = [s["prompt"] for s in result.samples[:questions]]
    log = result.run_dir / "serve.log"
    rows = ask_served(settings, result.registry_ref, prompts, None if verbose else log)
    console.print(answers_table(rows, config.base_model, result.registry_ref))
    if not verbose:
        console.print(f"engine log (vLLM warnings and details): {log}")


def ask_served(
    settings: Any, adapter: str, prompts: list[str], log: Path | None, **kwargs: Any
) -> list[dict[str, str]]:
    """`serving.demo.side_by_side` with the engine's output (every process) in `log`, when given."""
    from serving.demo import side_by_side

    if log is None:
        return side_by_side(settings, adapter, prompts, **kwargs)
    try:
        with engine_output_to(log):
            return side_by_side(settings, adapter, prompts, **kwargs)
    except RuntimeError as exc:  # the server did not start: the reason is in the log
        raise click.ClickException(f"serving failed: {exc}; engine log: {log}") from exc


@contextmanager
def engine_output_to(log: Path) -> Iterator[None]:
    """File descriptors 1 and 2 write to `log` inside the block.

    vLLM's engine-core child process and native libraries write to the descriptors directly,
    so redirecting sys.stdout would not catch them; the children inherit these descriptors.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    try:
        with log.open("ab") as fh:
            os.dup2(fh.fileno(), 1)
            os.dup2(fh.fileno(), 2)
            yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, copy in zip((1, 2), saved, strict=True):
            os.dup2(copy, fd)
            os.close(copy)


def answers_table(rows: list[dict[str, str]], base_model: str, adapter: str) -> Table:
    """Prompt, base answer and adapter answer side by side; long model names in the title, not the headers."""
    table = Table(
        title=f"same questions: base = {base_model}, adapter = {adapter} (served by platform serve)",
        show_lines=True,
    )
    for column in ("prompt", "base", "adapter"):
        table.add_column(column, ratio=1, overflow="fold")
    for row in rows:
        table.add_row(Text(row["prompt"]), Text(row["base"]), Text(row["adapter"]))
    return table
