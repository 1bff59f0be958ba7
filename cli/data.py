"""`platform data export`: logged production traffic -> a training file."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import click
from rich.console import Console

from cli.errors import handle_errors
from cli.options import POSITIVE_DURATION, registry_options

console = Console()


@click.group("data")
def data_group() -> None:
    """Training data from production: export logged traffic."""


@data_group.command("export")
@click.argument("name")
@click.option("--version", "version_ref", help="Only traffic this version answered (name@3, name:prod).")
@click.option(
    "--thumbs", type=click.Choice(["up", "down"]), help="Only completions with this thumbs feedback."
)
@click.option("--min-score", type=float, help="Only completions scored at least this.")
@click.option("--since", type=POSITIVE_DURATION, help="Only traffic of the last 7d, 12h, 30m, ...")
@click.option("--reviewed", is_flag=True, help="Add human-reviewed items with their preferred answer.")
@click.option(
    "--pairs",
    "kind",
    flag_value="pairs",
    help="DPO rows {prompt, chosen, rejected} from review choices and from thumbs up vs thumbs down "
    "answers to the same prompt (rubric scores kept per side).",
)
@click.option(
    "--unpaired",
    "kind",
    flag_value="unpaired",
    help="KTO rows {prompt, completion, label} from thumbs and from both answers of review choices.",
)
@click.option(
    "--out", required=True, type=click.Path(dir_okay=False), help="Training file to write (.jsonl)."
)
@registry_options
@handle_errors
def export_cmd(
    name: str,
    version_ref: str | None,
    thumbs: str | None,
    min_score: float | None,
    since: float | None,
    reviewed: bool,
    kind: str | None,
    out: str,
    registry_root: str | None,
) -> None:
    """Turn the logged traffic of adapter or route NAME (`platform serve --log-payloads NAME`)
    into a chat-shaped training file for `platform train --data FILE`: deduplicated, and without
    the rows whose prompt is in a serving version's held-out test set. With --pairs or --unpaired:
    preference rows for `training.objective=dpo|kto`, human review choices always included."""
    from trainer.export import DISLIKED_AS_SFT, ExportFilters, ExportKind, export, sidecar

    if thumbs == "down" and kind is None:
        raise click.BadParameter(DISLIKED_AS_SFT, param_hint="--thumbs")
    filters = ExportFilters(version_ref, thumbs, min_score, since, reviewed)
    r = export(name, Path(out), filters, registry_root, kind=cast("ExportKind", kind or "sft"))
    console.print(
        f"{r.rows} rows written to {out} (sha256 {r.sha256[:12]}...): {r.logged} logged, "
        f"{r.filtered_out} filtered out, {r.unusable} unusable, {r.duplicates_dropped} duplicates, "
        f"{r.leaked_dropped} held-out leaks dropped (checked against {', '.join(r.heldout_checked) or 'none'})"
    )
    if r.sources:
        console.print("by source: " + ", ".join(f"{k} {v}" for k, v in sorted(r.sources.items())))
    console.print(f"export record: {sidecar(Path(out))}")
