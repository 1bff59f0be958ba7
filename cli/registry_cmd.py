"""`platform registry ...`: add, list, show, alias, tag, rm, gc, verify, push/pull (Hugging Face Hub)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.text import Text

from cli.errors import handle_errors
from cli.options import DURATION, registry_options
from cli.tables import print_records
from cli.train import tracking_lines
from registry.store import Registry, Version

console = Console()
_root = registry_options
_json = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")


def _summary(v: Version) -> dict[str, Any]:
    metrics = v.lineage.get("metrics", {}).get("adapter", {})
    return {
        "ref": v.ref,
        "name": v.name,
        "version": v.version,
        "aliases": list(v.aliases),
        "tags": list(v.tags),
        "base_model": v.base_model,
        "base_sha256": v.base_sha256,
        "created": datetime.fromtimestamp(v.created, UTC).isoformat(timespec="seconds"),
        "parent": v.parent,
        "metrics": metrics,
        "path": str(v.path),
    }


@click.group("registry")
def registry_group() -> None:
    """Versioned adapter registry: references are name, name@3 or name:alias."""


@registry_group.command("add")
@click.argument("path", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--name", required=True, help="Adapter name for the new version.")
@click.option(
    "--base-model",
    help="Base model it was trained on (default: base_model_name_or_path of adapter_config.json).",
)
@_root
@handle_errors
def add_cmd(path: Path, name: str, base_model: str | None, registry_root: str | None) -> None:
    """Register a local peft folder (Axolotl, TRL, downloaded) after checking it against its base model."""
    from registry.add import add_folder

    v = add_folder(Registry(registry_root), path, name, base_model)
    console.print(f"added {path} as {v.ref} (base {v.base_model}, sha256 {v.base_sha256[:12]}...)")


@registry_group.command("list")
@click.argument("name", required=False)
@_root
@_json
@handle_errors
def list_cmd(name: str | None, registry_root: str | None, as_json: bool) -> None:
    """List versions (of NAME, or of every adapter)."""
    reg = Registry(registry_root)
    versions = reg.list_versions(name)
    rows = [_summary(v) for v in versions]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    title = f"registry {reg.location}"
    bases = {r["base_model"] for r in rows}
    if len(bases) == 1:  # one base model for all: said once, in the title
        title += f", base model {bases.pop()}"
    records = []
    for r in rows:
        em = r["metrics"].get("exact_match")
        record = {"ref": r["ref"], "aliases": ",".join(r["aliases"]), "tags": ",".join(r["tags"])}
        if not title.endswith(r["base_model"]):
            record["base model"] = r["base_model"]
        record["created (UTC)"] = r["created"][:16].replace("T", " ")
        record["exact_match"] = f"{em:.3f}" if em is not None else "-"
        records.append(record)
    print_records(console, title, records)


@registry_group.command("show")
@click.argument("ref")
@_root
@_json
@handle_errors
def show_cmd(ref: str, registry_root: str | None, as_json: bool) -> None:
    """Show one version with its lineage (files are verified first)."""
    from registry.card import evaluation_lines, review_lines, rollout_lines

    reg = Registry(registry_root)
    v = reg.get(ref)
    reviews, rollouts = reg.reviews().summaries_for(v.ref), reg.rollouts().outcomes_for(v.ref)
    evaluations = reg.evaluations().for_version(v.name, v.version)
    data = {**_summary(v), "lineage": v.lineage, "reviews": reviews, "rollouts": rollouts}
    data["evaluations"] = evaluations
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
        return
    for key in ("ref", "aliases", "tags", "base_model", "base_sha256", "created", "parent", "path"):
        _field(key, data[key])
    ds = v.lineage.get("dataset")
    if ds:
        _field("dataset", f"{ds.get('source')} sha256 {str(ds.get('sha256'))[:12]} splits {ds.get('splits')}")
    added = v.lineage.get("added_from")
    if added:
        _field("added from", f"{added.get('path')} (rank {added.get('rank')}, {added.get('target_modules')})")
    for side, metrics in v.lineage.get("metrics", {}).items():
        _field(side, ", ".join(f"{k}={val:.4f}" for k, val in metrics.items()))
    for line in tracking_lines(v.lineage.get("tracking") or {}):
        _field("tracking", line)
    for line in review_lines(reviews):
        _field("human review", line)
    for line in rollout_lines(rollouts):
        _field("rollout", line)
    for line in evaluation_lines(evaluations):
        _field("evaluation", line)


def _field(key: str, value: Any) -> None:
    """`key: value` on one line; the terminal wraps long values (paths, hashes) instead of rich cutting them."""
    console.print(Text.assemble((f"{key:>12}", "bold"), f": {value}"), soft_wrap=True)


@registry_group.command("alias")
@click.argument("ref")
@click.argument("alias")
@_root
@handle_errors
def alias_cmd(ref: str, alias: str, registry_root: str | None) -> None:
    """Point NAME:ALIAS at the version REF names (atomic move)."""
    v, moved = Registry(registry_root).set_alias(ref, alias)
    console.print(f"{v.name}:{alias} -> {v.ref}" + ("" if moved else " (already)"))


@registry_group.command("schema")
@click.argument("ref")
@click.argument("file", required=False, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--remove", is_flag=True, help="Publish REF without a default response format.")
@_root
@handle_errors
def schema_cmd(ref: str, file: Path | None, remove: bool, registry_root: str | None) -> None:
    """Give a version a default response format: FILE holds a JSON schema (or an OpenAI
    response_format object); requests that name none get schema-valid JSON. A version's files never
    change, so REF is published again as the next version with it: move the alias to that version
    (or roll it out). Without FILE: print REF's stored format."""
    from registry.errors import RegistryError
    from registry.response_format import read_response_format, stored_response_format, with_response_format

    reg = Registry(registry_root)
    if file is None and not remove:
        click.echo(json.dumps(stored_response_format(reg.get(ref)), indent=2))
        return
    if file is not None and remove:
        raise click.UsageError("give FILE or --remove, not both")
    rf = None
    if file is not None:
        try:
            rf = read_response_format(file, reg.resolve(ref)[0])
        except RegistryError as exc:
            raise click.BadParameter(exc.message, param_hint="FILE") from exc
    v = with_response_format(reg, ref, rf)
    what = (
        "without a default response format" if file is None else f"with {file} as its default response format"
    )
    console.print(f"published {v.ref}: the files of {ref} {what}; move an alias to it to serve it")


@registry_group.command("tag")
@click.argument("ref")
@click.argument("tag")
@click.option("--remove", is_flag=True, help="Remove the tag instead.")
@_root
@handle_errors
def tag_cmd(ref: str, tag: str, remove: bool, registry_root: str | None) -> None:
    """Add (or remove) a free-form tag on a version."""
    v = Registry(registry_root).tag(ref, tag, remove=remove)
    console.print(f"{v.ref} tags: {', '.join(v.tags) or '-'}")


@registry_group.command("rm")
@click.argument("ref")
@click.option("--force", is_flag=True, help="Remove even if an alias or A/B route points at it.")
@_root
@handle_errors
def rm_cmd(ref: str, force: bool, registry_root: str | None) -> None:
    """Remove one version."""
    v = Registry(registry_root).remove(ref, force=force)
    console.print(f"removed {v.ref}")


@registry_group.command("gc")
@click.option(
    "--older-than",
    type=DURATION,
    help="Also remove staging folders idle this long (e.g. 0s, 10m, 2h); default 1h. "
    "Younger ones may be pushes still running: use 0s only when no push is.",
)
@_root
@handle_errors
def gc_cmd(older_than: float | None, registry_root: str | None) -> None:
    """Remove orphaned version folders (from crashed pushes) and abandoned staging folders."""
    from registry.store import STAGING_GRACE_S

    report = Registry(registry_root).gc(STAGING_GRACE_S if older_than is None else older_than)
    click.echo(f"removed {len(report.removed)} folder(s)")
    for path, why in report.removed:
        click.echo(f"  {path}: {why}")
    if report.kept:
        click.echo(f"kept {len(report.kept)} staging folder(s) (pass --older-than to remove them)")
        for path, why in report.kept:
            click.echo(f"  {path}: {why}")


@registry_group.command("verify")
@_root
@_json
@handle_errors
def verify_cmd(registry_root: str | None, as_json: bool) -> None:
    """Check every version's files against its manifest; exit 1 when any fails."""
    report = Registry(registry_root).verify_all()
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        for ref, err in report.items():
            console.print(f"{ref}: " + ("[green]ok[/]" if err is None else f"[red]{err}[/]"))
    bad = [r for r, e in report.items() if e]
    if bad:
        raise click.ClickException(f"{len(bad)} version(s) failed verification: {', '.join(bad)}")


@registry_group.command("push")
@click.argument("ref")
@click.option("--to", "target", required=True, help="hf://ORG/REPO[@BRANCH]")
@click.option("--public", is_flag=True, help="Create the Hub repo public (default private).")
@_root
@handle_errors
def push_cmd(ref: str, target: str, public: bool, registry_root: str | None) -> None:
    """Upload one version to the Hugging Face Hub as one commit (tagged vN and with its aliases)."""
    from registry.hub import push

    oid = push(Registry(registry_root), ref, target, private=not public)
    console.print(f"pushed {ref} to {target} (commit {oid[:12]})")


@registry_group.command("pull")
@click.argument("source")
@click.option("--as", "name", required=True, help="Local adapter name for the new version.")
@_root
@handle_errors
def pull_cmd(source: str, name: str, registry_root: str | None) -> None:
    """Import hf://ORG/REPO[@REVISION] as a new local version, verifying every file's sha256."""
    from registry.hub import pull

    v = pull(Registry(registry_root), source, name)
    console.print(f"pulled {source} as {v.ref}")


@registry_group.command("migrate")
@click.option("--to", "target", required=True, help="The shared registry: postgresql://user:pw@host:port/db.")
@click.option(
    "--to-artifacts",
    "--artifacts",
    "target_artifacts",
    required=True,
    help="The shared registry's artifact store: a shared folder or an fsspec URL (s3://...).",
)
@click.option(
    "--registry",
    "registry_root",
    envvar="LORA_PLATFORM_REGISTRY",
    help="The registry to copy from (default ~/.cache/lora-platform/registry).",
)
@handle_errors
def migrate_cmd(target: str, target_artifacts: str, registry_root: str | None) -> None:
    """Copy a registry (every version with its number, aliases, tags, routes, A/B evidence) into a
    shared PostgreSQL registry, verifying every file; running it again copies only what is missing."""
    from registry.migrate import copy_registry

    source, dest = Registry(registry_root), Registry(target, target_artifacts)
    report = copy_registry(source, dest)
    click.echo(
        f"copied {len(report.copied)} version(s) from {source.location} to {dest.location} "
        f"({len(report.already_there)} already there); {report.aliases} alias(es), {report.tags} tag(s), "
        f"{report.routes} route(s), {report.evidence_rows} evidence row(s), {report.feedback_rows} feedback row(s)"
    )
    if report.verify_errors:
        bad = ", ".join(f"{ref}: {err}" for ref, err in report.verify_errors.items())
        raise click.ClickException(f"the copy does not verify: {bad}")
    click.echo(f"every file verified ({len(dest.list_versions())} version(s) in the target)")
