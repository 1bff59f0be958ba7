"""`platform ab ...`: A/B routes between adapter versions, and their report."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.text import Text

from cli.errors import handle_errors
from cli.options import open_registry, registry_options
from cli.tables import print_records
from registry.routes import Route

console = Console()
_root = registry_options
_variant = click.option(
    "--variant", "variants", multiple=True, required=True, help="REF=WEIGHT, e.g. support@3=90."
)


def _shares(variants: list[dict[str, Any]]) -> str:
    total = sum(v["weight"] for v in variants) or 1
    return ", ".join(f"{v['ref']} {v['weight'] / total:.0%}" for v in variants)


def _show(route: Route) -> None:
    shadow = f"  shadow {route.shadow} ({route.shadow_share:.0%})" if route.shadow else ""
    parts = _shares([{"ref": v.ref, "weight": v.weight} for v in route.variants])
    console.print(Text(f"{route.name}: {parts}{shadow}"), soft_wrap=True)


def _variant_record(variant: str, s: dict[str, Any]) -> dict[str, str]:
    """One variant's row of the report table."""

    def sec(x: float | None) -> str:
        return "-" if x is None else f"{x:.3f}s"

    def ci(e: dict[str, float] | None) -> str:
        return "-" if e is None else f"{e['mean']:.3f} [{e['low']:.3f}, {e['high']:.3f}]"

    return {
        "variant": variant,
        "requests": str(s["requests"]),
        "errors": str(s["errors"]),
        "latency p50 / p95": f"{sec(s['latency_p50_s'])} / {sec(s['latency_p95_s'])}",
        "ttft p50 / p95": f"{sec(s['ttft_p50_s'])} / {sec(s['ttft_p95_s'])}",
        "tokens out": str(s["completion_tokens"]),
        "feedback": str(s["feedback"]),
        "score (95% CI)": ci(s["score"]),
        "thumbs up (95% CI)": ci(s["thumbs_up_rate"]),
    }


@click.group("ab")
def ab_group() -> None:
    """A/B routes: a public model name split between adapter versions, sticky per user."""


@ab_group.command("start")
@click.argument("name")
@_variant
@click.option("--shadow", help="Candidate version that gets copies of requests (answers only logged).")
@click.option("--shadow-share", type=float, default=0.1, show_default=True)
@_root
@handle_errors
def start_cmd(
    name: str, variants: tuple[str, ...], shadow: str | None, shadow_share: float, registry_root: str | None
) -> None:
    """Start route NAME, e.g. `platform ab start support --variant support@3=90 --variant support@4=10`."""
    from registry.routes import parse_variant, start_route

    _show(
        start_route(
            open_registry(registry_root), name, [parse_variant(v) for v in variants], shadow, shadow_share
        )
    )


@ab_group.command("set")
@click.argument("name")
@_variant
@click.option("--shadow")
@click.option("--shadow-share", type=float)
@_root
@handle_errors
def set_cmd(
    name: str,
    variants: tuple[str, ...],
    shadow: str | None,
    shadow_share: float | None,
    registry_root: str | None,
) -> None:
    """Change the weights of route NAME (servers apply it within a second)."""
    from registry.routes import parse_variant, set_weights

    _show(
        set_weights(
            open_registry(registry_root), name, [parse_variant(v) for v in variants], shadow, shadow_share
        )
    )


@ab_group.command("stop")
@click.argument("name")
@_root
@handle_errors
def stop_cmd(name: str, registry_root: str | None) -> None:
    """End route NAME (its evidence stays for the report)."""
    from registry.routes import stop_route

    stop_route(open_registry(registry_root), name)
    console.print(f"stopped {name}")


@ab_group.command("promote")
@click.argument("name")
@click.argument("ref")
@click.option("--alias", default="prod", show_default=True)
@_root
@handle_errors
def promote_cmd(name: str, ref: str, alias: str, registry_root: str | None) -> None:
    """Move REF's alias (default prod) to REF and end route NAME, atomically."""
    from registry.routes import promote

    moved = promote(open_registry(registry_root), name, ref, alias)
    console.print(f"{moved} -> {ref}; route {name} ended")


@ab_group.command("list")
@click.option("--json", "as_json", is_flag=True)
@_root
@handle_errors
def list_cmd(as_json: bool, registry_root: str | None) -> None:
    """List active routes."""
    from registry.routes import list_routes

    routes = list_routes(open_registry(registry_root))
    if as_json:
        click.echo(json.dumps([{"name": r.name, **r.spec()} for r in routes], indent=2))
        return
    for r in routes:
        _show(r)


@ab_group.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
@_root
@handle_errors
def show_cmd(name: str, as_json: bool, registry_root: str | None) -> None:
    """Show route NAME and its weight history."""
    from registry.routes import get_route

    route = get_route(open_registry(registry_root), name)
    if as_json:
        click.echo(json.dumps({"name": route.name, **route.spec()}, indent=2))
        return
    _show(route)
    for h in route.history:
        until = datetime.fromtimestamp(h["until"], UTC).strftime("%Y-%m-%d %H:%M") if "until" in h else "?"
        console.print(Text(f"  until {until} UTC: {_shares(h['variants'])}"), soft_wrap=True)


@ab_group.command("report")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
@click.option("--png", type=click.Path(dir_okay=False), help="Write a chart here.")
@_root
@handle_errors
def report_cmd(name: str, as_json: bool, png: str | None, registry_root: str | None) -> None:
    """Per-variant requests, errors, latency/TTFT p50/p95, tokens, feedback with 95% CIs, tests, verdict."""
    from serving.experiments.report import build_report, plot

    report = build_report(registry_root, name)
    if png:
        plot(report, Path(png))
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    title = f"A/B route {name}" + ("" if report["active"] else " (ended)")
    print_records(console, title, [_variant_record(v, s) for v, s in report["variants"].items()])
    for c in report["comparisons"]:
        for metric in ("thumbs_up", "score", "latency", "error_rate"):
            t = c[metric]
            if t:
                console.print(
                    f"{c['variant']} vs {c['control']} {metric}: diff {t['difference']:+.4g}, "
                    f"p={t['p_value']:.3g} ({t['name']})"
                )
    console.print(f"[bold]verdict:[/] {report['verdict']}")
