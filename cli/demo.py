"""`platform demo`: the main job. Train on the embedded default, serve, query base and adapter."""

from __future__ import annotations

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from cli.errors import handle_errors
from cli.train import print_run

console = Console()


@click.command("demo")
@click.option("--registry", "registry_root", envvar="LORA_PLATFORM_REGISTRY", help="Registry folder.")
@click.option("--output-dir", default="runs", show_default=True)
@click.option("--questions", default=3, show_default=True, help="Held-out prompts to ask both models.")
@handle_errors
def demo_cmd(registry_root: str | None, output_dir: str, questions: int) -> None:
    """Train the default adapter, start `platform serve` in-process, ask base and adapter side by side."""
    from rich.console import Console as StderrConsole

    from serving.demo import side_by_side
    from serving.settings import load_settings
    from trainer.config import load_config
    from trainer.publish import publish
    from trainer.recipe import run

    config = load_config(None, [f"output_dir={output_dir}"])
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
    rows = side_by_side(settings, result.registry_ref, prompts)
    console.print(answers_table(rows, config.base_model, result.registry_ref))


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
