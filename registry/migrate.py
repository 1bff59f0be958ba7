"""Copy a registry into another one (`platform registry migrate`): a local folder into a shared
PostgreSQL catalog + artifact store, typically.

Every version keeps its number, lineage, creation time, aliases and tags; every issued number
stays issued (a removed version's number is never reused in the target either); routes and A/B
evidence come along. Each version's files are verified against the source manifest before they
are published, and the whole target is verified at the end. Running it again copies only what
is missing; a version that exists in both with different files is a conflict and stops it.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field

from registry.catalog import VersionRow
from registry.errors import ConflictError
from registry.manifest import verify
from registry.store import Registry, Version


@dataclass
class MigrationReport:
    """What was copied, what was already there, and the target's verification."""

    copied: list[str] = field(default_factory=list)
    already_there: list[str] = field(default_factory=list)
    aliases: int = 0
    tags: int = 0
    routes: int = 0
    evidence_rows: int = 0
    feedback_rows: int = 0
    verify_errors: dict[str, str] = field(default_factory=dict)


def copy_registry(src: Registry, dst: Registry) -> MigrationReport:
    """Copy everything `src` holds into `dst`, then verify every version in `dst`."""
    report = MigrationReport()
    existing = {(v.name, v.version): v for v in dst.list_versions()}
    for v in src.list_versions():
        there = existing.get((v.name, v.version))
        if there is not None:
            if there.manifest_sha256 != v.manifest_sha256:
                raise ConflictError(
                    f"{v.ref} exists in both registries with different files; "
                    "migrate into an empty registry or remove it from the target first"
                )
            report.already_there.append(v.ref)
            continue
        _copy_version(src, dst, v)
        report.copied.append(v.ref)
    with dst.catalog.write() as tx:
        for name, last in src.catalog.issued().items():
            tx.issue_at_least(name, last)
        for (name, alias), version in src.catalog.aliases().items():
            if tx.alias_version(name, alias) is None:
                tx.set_alias(name, alias, version)
                report.aliases += 1
        for v in src.list_versions():
            for tag in v.tags:
                tx.set_tag(v.name, v.version, tag, present=True)
                report.tags += 1
        for route in src.catalog.routes():
            if tx.route(route.name) is None:
                tx.put_route(route)
                report.routes += 1
    report.evidence_rows, report.feedback_rows = dst.evidence().copy_from(src.evidence())
    report.verify_errors = {ref: err for ref, err in dst.verify_all().items() if err}
    return report


def _copy_version(src: Registry, dst: Registry, v: Version) -> None:
    source = src.get(v.ref, verify_files=True)  # fetched (remote source) and checked
    with dst.store.staging() as staging:
        for f in sorted(p for p in source.path.rglob("*") if p.is_file()):
            target = staging / f.relative_to(source.path)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, target)
        verify(staging, v.manifest_sha256, v.ref)  # the copy, not only the source
        with dst.catalog.write() as tx:
            tx.issue_at_least(v.name, v.version)
            dst.store.publish(staging, v.name, v.version)
            tx.insert_version(
                VersionRow(
                    name=v.name,
                    version=v.version,
                    created=v.created,
                    base_model=v.base_model,
                    base_sha256=v.base_sha256,
                    manifest_sha256=v.manifest_sha256,
                    parent=v.parent,
                    lineage=v.lineage,
                )
            )
