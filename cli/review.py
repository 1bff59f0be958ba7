"""`platform review ...`: blind human review of two versions in the browser, and its results."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.text import Text

from cli.errors import handle_errors
from cli.options import open_registry, registry_options
from cli.tables import print_records

console = Console()


@click.group("review")
def review_group() -> None:
    """Human review: reviewers rate two versions' answers side by side, blind, in the browser."""


@review_group.command("create")
@click.argument("name")
@click.option(
    "--versions", nargs=2, required=True, metavar="REF_A REF_B", help="The two versions to compare."
)
@click.option("--data", help="Prompts: a JSONL file (alpaca, prompt/completion, chat) or sample:NAME.")
@click.option("--from-traffic", "traffic", metavar="REF", help="Prompts from logged traffic of REF.")
@click.option("--samples", default=100, show_default=True, type=click.IntRange(1), help="Items to review.")
@click.option(
    "--stratify",
    default="length",
    show_default=True,
    help="Spread the sample over prompt length, or over the values of this field of the data rows.",
)
@click.option(
    "--rubric", type=click.Path(dir_okay=False, path_type=Path), help="Rubric YAML (default: shipped)."
)
@click.option("--reviewers-per-item", default=1, show_default=True, type=click.IntRange(1), help="K.")
@click.option(
    "--server", help="Generate through a running `platform serve` at this URL (default: in-process)."
)
@click.option("--max-new-tokens", default=256, show_default=True, type=click.IntRange(1))
@click.option("--seed", default=0, show_default=True, type=int, help="Sample and left/right order.")
@registry_options
@handle_errors
def create_cmd(
    name: str,
    versions: tuple[str, str],
    data: str | None,
    traffic: str | None,
    samples: int,
    stratify: str,
    rubric: Path | None,
    reviewers_per_item: int,
    server: str | None,
    max_new_tokens: int,
    seed: int,
    registry_root: str | None,
) -> None:
    """Make the blind review set NAME: a diverse sample of prompts, answered by both versions."""
    from registry import reviews as rv
    from registry.refs import check_name
    from registry.rubric import RubricError, load_rubric
    from trainer.data import load_examples
    from trainer.review_sample import build_items

    if (data is None) == (traffic is None):
        raise click.UsageError("give the prompts with --data FILE or --from-traffic REF (one of them)")
    try:
        parsed = load_rubric(rubric)
    except RubricError as exc:
        raise click.BadParameter(str(exc), param_hint="--rubric") from None
    check_name(name, "review name")
    reg = open_registry(registry_root)
    refs = tuple("{}@{}".format(*reg.resolve(r)) for r in versions)
    if refs[0] == refs[1]:
        raise click.BadParameter(
            f"both are {refs[0]}: compare two different versions", param_hint="--versions"
        )
    if traffic is not None:
        from trainer.export import traffic_prompts

        examples = traffic_prompts(reg, traffic)
        if not examples:
            raise click.BadParameter(
                f"no logged traffic for {traffic}: serve it with `platform serve --log-payloads "
                f"{traffic.split('@')[0].split(':')[0]}` first, or use --data FILE",
                param_hint="--from-traffic",
            )
    else:
        assert data is not None
        examples, _, _ = load_examples(data)
    console.print(Text(f"review {name}: answering up to {samples} prompts with {refs[0]} and {refs[1]}"))
    items = build_items(
        examples,
        (refs[0], refs[1]),
        registry_root,
        samples=samples,
        stratify=stratify,
        seed=seed,
        server=server,
        max_new_tokens=max_new_tokens,
    )
    source = data if data is not None else f"traffic:{traffic}"
    spec = rv.ReviewSpec(refs[0], refs[1], parsed.to_dict(), reviewers_per_item, source, stratify, seed)
    review = reg.reviews().create(name, spec, items)
    strata = sorted({it.stratum for it in items})
    console.print(
        Text(
            f"review {review.name}: {review.items} items ({', '.join(strata)}), {reviewers_per_item} "
            f"reviewer(s) each; open it with `platform review serve`"
        ),
        soft_wrap=True,
    )


def _check_key(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    from serving.settings import check_key

    if value is not None:
        try:
            check_key(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None
    return value


@review_group.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8010, show_default=True, type=click.IntRange(1, 65535))
@click.option(
    "--admin-key",
    envvar="LORA_PLATFORM_ADMIN_KEY",
    callback=_check_key,
    help="Ask for this key (16+ characters) or a reviewer's invite first.",
)
@click.option(
    "--allow-unauthenticated",
    is_flag=True,
    help="Serve a non-loopback --host without --admin-key (the pages open to the network).",
)
@click.option(
    "--allowed-host",
    "allowed_hosts",
    multiple=True,
    help="Host name the pages answer to (repeatable; *.example.com allowed); others get 400.",
)
@registry_options
@handle_errors
def serve_cmd(
    host: str,
    port: int,
    admin_key: str | None,
    allow_unauthenticated: bool,
    allowed_hosts: tuple[str, ...],
    registry_root: str | None,
) -> None:
    """Serve the review pages (every review set of the registry) at http://HOST:PORT/review/."""
    import uvicorn

    from serving.review.web import create_review_app
    from serving.settings import StartupError, check_exposure

    try:
        check_exposure(host, admin_key, allow_unauthenticated, key_flag="--admin-key")
    except StartupError as exc:
        raise click.BadParameter(exc.message, param_hint=exc.param) from None
    app = create_review_app(open_registry(registry_root), admin_key, allowed_hosts)
    console.print(Text(f"review pages at http://{host}:{port}/review/"))
    uvicorn.run(app, host=host, port=port, log_level="warning")


@review_group.command("invite")
@click.argument("reviewer")
@registry_options
@handle_errors
def invite_cmd(reviewer: str, registry_root: str | None) -> None:
    """A new invite for REVIEWER: their own key to the review pages (shown once). It rates as
    REVIEWER only, does not see results and never reaches /admin; `platform review revoke` ends it."""

    token = open_registry(registry_root).invites().invite(reviewer)
    console.print(Text(f"invite for {reviewer.strip()} (shown once; give it on /review/login):"))
    click.echo(token)


@review_group.command("revoke")
@click.argument("reviewer")
@registry_options
@handle_errors
def revoke_cmd(reviewer: str, registry_root: str | None) -> None:
    """Revoke every invite of REVIEWER (their next request is refused)."""

    n = open_registry(registry_root).invites().revoke(reviewer)
    console.print(Text(f"revoked {n} invite(s) of {reviewer.strip()}"))


@review_group.command("invites")
@registry_options
@handle_errors
def invites_cmd(registry_root: str | None) -> None:
    """Every invite: reviewer, when it was made, whether it is revoked."""
    import datetime as dt

    def when(ts: float | None) -> str:
        return "" if ts is None else dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M")

    rows = [
        {"reviewer": i.reviewer, "created": when(i.created), "revoked": when(i.revoked)}
        for i in open_registry(registry_root).invites().invites()
    ]
    print_records(console, "invites", rows)


@review_group.command("report")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the whole report as JSON.")
@click.option("--png", type=click.Path(dir_okay=False, path_type=Path), help="Chart: win rate and criteria.")
@click.option(
    "--csv", "csv_file", type=click.Path(dir_okay=False, path_type=Path), help="Every rating, one row each."
)
@registry_options
@handle_errors
def report_cmd(
    name: str, as_json: bool, png: Path | None, csv_file: Path | None, registry_root: str | None
) -> None:
    """Results of review NAME: win rate of B over A, criteria, agreement (stored with both versions)."""
    from serving.experiments.review_report import plot, ratings_csv, report_for

    reg = open_registry(registry_root)
    report = report_for(reg, name)
    if png:
        plot(report, png)
    if csv_file:
        review = reg.reviews().get(name)
        csv_file.write_text(ratings_csv(review, reg.reviews().items(name), reg.reviews().ratings(name)))
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
        return
    _print(report)


def _ci(e: Any, scale: float = 1.0, fmt: str = "{:.2f}") -> str:
    if e is None:
        return "-"
    return f"{fmt.format(e.mean * scale)} [{fmt.format(e.low * scale)}, {fmt.format(e.high * scale)}]"


def _print(report: Any) -> None:
    w = report.win_rate
    alpha = "undefined" if report.alpha is None else f"{report.alpha:.3f}"
    lines = [
        f"review {report.review}: A = {report.version_a}, B = {report.version_b}",
        f"{report.ratings} complete ratings of {report.items} items by {len(report.reviewers)} reviewer(s)",
        f"win rate of B over A: {_ci(w, 100, '{:.1f}')} % (95% CI; {report.ties_rule})"
        if w
        else "win rate of B over A: no complete ratings yet",
        f"B preferred {report.b_wins}, A preferred {report.a_wins}, ties {report.ties}",
        f"agreement on the preference: {alpha} ({report.agreement_method})",
    ]
    for line in lines:
        console.print(Text(line), soft_wrap=True)
    rows = [
        {
            "criterion": c.name,
            "A mean": _ci(c.a),
            "B mean": _ci(c.b),
            "B - A": _ci(c.difference, fmt="{:+.2f}"),
            "alpha": "-" if c.alpha is None else f"{c.alpha:.3f}",
        }
        for c in report.criteria
    ]
    print_records(console, "criteria (mean, 95% CI)", rows)
    split = [
        {
            "item": str(d.item),
            "votes": ", ".join(f"{k}: {n}" for k, n in d.votes.items()),
            "prompt": d.prompt[:80],
        }
        for d in report.disagreements
    ]
    print_records(console, "most disagreement", split)
