"""`platform monitor NAME`: drift of each served version against its first days in service."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import click
from rich.console import Console

from cli.errors import handle_errors
from cli.options import POSITIVE_DURATION, open_registry, registry_options
from cli.tables import print_records

console = Console()


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.3g}"


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M")


@click.command("monitor")
@click.argument("name")
@click.option(
    "--reference", default="3d", type=POSITIVE_DURATION, help="Reference: a version's first 3d in service."
)
@click.option(
    "--window", default="1d", type=POSITIVE_DURATION, help="Recent window compared with it (default 1d)."
)
@click.option("--alpha", type=click.FloatRange(0, 1, min_open=True), default=0.01, help="Significance level.")
@click.option("--min-n", type=click.IntRange(min=2), default=10, help="Fewest values per window to test.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@registry_options
@handle_errors
def monitor_cmd(
    name: str,
    reference: float,
    window: float,
    alpha: float,
    min_n: int,
    as_json: bool,
    registry_root: str | None,
) -> None:
    """What moved in the logged traffic of adapter or route NAME (`platform serve --log-payloads`):
    completion length, empty/refused rate, thumbs-up rate, score, latency and TTFT of each version's
    recent window against its first days in service, with a significance test per signal.
    Exits 0; `moved` lists the signals whose change is significant."""
    from serving.experiments.drift import drift_report

    registry = open_registry(registry_root)
    try:
        reports = drift_report(registry.payloads(), name, reference, window, alpha=alpha, min_n=min_n)
    finally:
        registry.close()
    if as_json:
        click.echo(json.dumps({"name": name, "versions": [r.to_dict() for r in reports]}, indent=2))
        return
    if not reports:
        raise click.ClickException(f"no logged traffic for {name!r}; serve it with --log-payloads {name}")
    for r in reports:
        moved = ", ".join(s.signal for s in r.moved) or "nothing moved"
        console.print(
            f"[bold]{r.version}[/]: reference {_when(r.reference[0])} .. {_when(r.reference[1])}, "
            f"window {_when(r.current[0])} .. {_when(r.current[1])}: [bold]{moved}[/]"
        )
        print_records(console, f"drift of {r.version}", [_record(s) for s in r.signals])


def _record(s: Any) -> dict[str, str]:
    return {
        "signal": s.signal,
        "reference": f"{_num(s.reference)} (n={s.n_reference})",
        "current": f"{_num(s.current)} (n={s.n_current})",
        "p": _num(s.p_value),
        "moved": "yes" if s.moved else "-",
    }
