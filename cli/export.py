"""`platform export REF --format gguf|gguf-merged|ollama`: a version for llama.cpp and Ollama."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console

from cli.errors import handle_errors
from cli.options import registry_options

console = Console()
FORMATS = ("gguf", "gguf-merged", "ollama")


@click.command("export")
@click.argument("ref")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default="gguf",
    show_default=True,
    help="gguf: the adapter as a GGUF LoRA (llama-server --lora); gguf-merged: one merged GGUF model; "
    "ollama: base GGUF + adapter GGUF + Modelfile.",
)
@click.option(
    "--quant",
    type=click.Choice(("f16", "q8_0")),
    default="f16",
    show_default=True,
    help="Weight type of the model GGUF (gguf-merged, ollama).",
)
@click.option(
    "--output", "-o", required=True, type=click.Path(file_okay=False, path_type=Path), help="Folder to write."
)
@registry_options
@handle_errors
def export_cmd(ref: str, fmt: str, quant: str, output: Path, registry_root: str | None) -> None:
    """Write version REF for llama.cpp or Ollama, with its model card and lineage."""
    from trainer.gguf_export import export

    files = export(ref, output, fmt, quant, registry_root)
    for f in files:
        console.print(f"wrote {f}")
