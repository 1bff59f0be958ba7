"""The local registry: a SQLite catalog (WAL) plus one immutable folder per version.

Layout of a registry root:
    catalog.sqlite                       names, versions, aliases, tags, routes, change counter
    versions/<name>/<n>/                 adapter files, lineage.json, README.md, manifest.json
    .staging/                            pushes in progress (never read)

Catalog state goes through `registry.catalog.Catalog` (here `SqliteCatalog`); this class owns
the version folders and the rules that tie the two together.

A push copies into `.staging`, writes the manifest, fsyncs, and then, inside one write
transaction, renames the folder into place and inserts the catalog row. A crash leaves either
the old state or the new one: a folder without a row is an orphan that readers never see and
`gc` removes. Readers verify every file against the manifest before handing a version out.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from registry.adapter import AdapterInfo, validate_adapter
from registry.card import write_card
from registry.catalog import Catalog, VersionRow
from registry.errors import ConflictError, IntegrityError, NotFoundError, RegistryError
from registry.manifest import fsync_tree, verify, write_manifest
from registry.refs import Ref, check_name, parse_ref
from registry.sqlite_catalog import FILE as CATALOG_FILE
from registry.sqlite_catalog import SqliteCatalog

LATEST = "latest"
KEEP_FILES = (
    "lineage.json",
    "metrics.json",
    "config.yaml",
    "train_log.jsonl",
    "loss.png",
    "predictions.jsonl",
)


STAGING_GRACE_S = 3600.0
"""`gc` keeps staging folders changed more recently than this: they may be pushes still copying."""


@dataclass
class GcReport:
    """What `gc` removed and what it kept, each with the reason."""

    removed: list[tuple[Path, str]] = field(default_factory=list)
    kept: list[tuple[Path, str]] = field(default_factory=list)


@dataclass(frozen=True)
class Version:
    """One immutable adapter version, as the catalog knows it."""

    name: str
    version: int
    path: Path
    created: float
    base_model: str
    base_sha256: str
    manifest_sha256: str
    parent: int | None
    lineage: dict[str, Any]
    aliases: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


def default_root() -> Path:
    from registry.paths import home

    return Path(os.environ.get("LORA_PLATFORM_REGISTRY") or home() / "registry")


class LocalRegistry:
    """A registry folder. Safe for several processes at once (SQLite locking + atomic renames)."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root else default_root()
        if self.root.exists() and not self.root.is_dir():
            raise RegistryError(f"{self.root}: registry path exists and is not a folder")
        if self.root.is_dir() and any(self.root.iterdir()) and not (self.root / CATALOG_FILE).is_file():
            raise RegistryError(
                f"{self.root}: folder is not a registry (no catalog.sqlite); choose an empty folder"
            )
        (self.root / "versions").mkdir(parents=True, exist_ok=True)
        (self.root / ".staging").mkdir(exist_ok=True)
        self.catalog: Catalog = SqliteCatalog(self.root / CATALOG_FILE)

    def version_dir(self, name: str, version: int) -> Path:
        path = (self.root / "versions" / check_name(name) / str(int(version))).resolve()
        if not path.is_relative_to((self.root / "versions").resolve()):
            raise IntegrityError(f"{name}@{version}: version folder escapes the registry root")
        return path

    def changes(self) -> int:
        """A counter bumped by every push, alias move, tag, rm and route change (cheap to poll)."""
        return self.catalog.changes()

    # -- push ----------------------------------------------------------------------------
    def push(
        self,
        name: str,
        adapter_dir: Path,
        lineage: dict[str, Any],
        extra_files: dict[str, Path] | None = None,
        parent: int | None = None,
    ) -> Version:
        """Store a new immutable version of `name`; returns it (with its version number)."""
        check_name(name)
        self._check_route_collision(name)
        info = validate_adapter(Path(adapter_dir))
        for key in ("base_model", "base_model_sha256"):
            if not lineage.get(key):
                raise RegistryError(f"push {name}: lineage lacks {key!r}; the base model must be recorded")
        staging = self.root / ".staging" / uuid.uuid4().hex
        try:
            staging.mkdir(parents=True)
            for f in ("adapter_model.safetensors", "adapter_config.json"):
                shutil.copyfile(Path(adapter_dir) / f, staging / f)
            for rel, src in (extra_files or {}).items():
                if Path(rel).name != rel or rel in ("manifest.json", "README.md"):
                    raise RegistryError(f"push {name}: extra file name {rel!r} is not allowed")
                shutil.copyfile(src, staging / rel)
            (staging / "lineage.json").write_text(json.dumps(lineage, indent=2, default=str) + "\n")
            return self._commit(name, staging, lineage, info, parent)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _check_route_collision(self, name: str) -> None:
        route = self.catalog.route(name)
        if route is not None and any(not v.ref.startswith(f"{name}@") for v in route.variants):
            raise ConflictError(
                f"{name!r} is the name of an A/B route over other adapters; choose another adapter name"
            )

    def _commit(
        self, name: str, staging: Path, lineage: dict[str, Any], info: AdapterInfo, parent: int | None
    ) -> Version:
        with self.catalog.write() as tx:
            # version numbers are never reused, even after `rm`: a number names one set of weights
            version = tx.issue_version(name)
            if parent is None:
                parent = tx.latest_version(name)
            lineage = {**lineage, "name": name, "version": version, "parent": parent}
            (staging / "lineage.json").write_text(json.dumps(lineage, indent=2, default=str) + "\n")
            write_card(staging / "README.md", name, version, lineage, info)
            manifest_sha = write_manifest(staging)
            fsync_tree(staging)
            target = self.version_dir(name, version)
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists():  # an orphan of a crashed push: no row points at it
                shutil.rmtree(target)
            os.rename(staging, target)
            _fsync_dir(target.parent)
            tx.insert_version(
                VersionRow(
                    name=name,
                    version=version,
                    created=time.time(),
                    base_model=lineage["base_model"],
                    base_sha256=lineage["base_model_sha256"],
                    manifest_sha256=manifest_sha,
                    parent=parent,
                    lineage=lineage,
                )
            )
        return self.get(Ref(name, version=version), verify_files=False)

    # -- read ----------------------------------------------------------------------------
    def resolve(self, ref: str | Ref) -> tuple[str, int]:
        """Resolve a reference to (name, version) without touching files."""
        r = parse_ref(ref) if isinstance(ref, str) else ref
        if r.version is not None:
            if self.catalog.version(r.name, r.version) is None:
                self._missing_name(r.name)
                raise NotFoundError(f"{r}: version {r.version} of {r.name!r} does not exist")
            return r.name, r.version
        if r.alias is not None and r.alias != LATEST:
            aliased = self.catalog.alias_version(r.name, r.alias)
            if aliased is None:
                self._missing_name(r.name)
                raise NotFoundError(f"{r}: alias {r.alias!r} of {r.name!r} does not exist")
            return r.name, aliased
        latest = self.catalog.latest_version(r.name)
        if latest is None:
            self._missing_name(r.name)
            raise NotFoundError(f"no adapter named {r.name!r} in the registry", path=self.root)
        return r.name, latest

    def _missing_name(self, name: str) -> None:
        if not self.catalog.has_name(name):
            raise NotFoundError(f"no adapter named {name!r} in the registry", path=self.root)

    def get(self, ref: str | Ref, verify_files: bool = True) -> Version:
        """The version a reference points at; with verify_files, every file is checked first."""
        name, version = self.resolve(ref)
        row = self.catalog.version(name, version)
        if row is None:  # removed between the two reads
            raise NotFoundError(f"{name}@{version}: version {version} of {name!r} does not exist")
        v = self._version(row)
        if verify_files:
            verify(v.path, v.manifest_sha256, v.ref)
        return v

    def _version(self, row: VersionRow) -> Version:
        return Version(
            name=row.name,
            version=row.version,
            path=self.version_dir(row.name, row.version),
            created=row.created,
            base_model=row.base_model,
            base_sha256=row.base_sha256,
            manifest_sha256=row.manifest_sha256,
            parent=row.parent,
            lineage=row.lineage,
            aliases=row.aliases,
            tags=row.tags,
        )

    def list_versions(self, name: str | None = None) -> list[Version]:
        return [self._version(r) for r in self.catalog.versions(None if name is None else check_name(name))]

    def aliases(self) -> dict[tuple[str, str], int]:
        return self.catalog.aliases()

    # -- mutate --------------------------------------------------------------------------
    def set_alias(self, ref: str, alias: str) -> tuple[Version, bool]:
        """Point `name:alias` at the version `ref` names; returns (version, moved)."""
        check_name(alias, "alias")
        if alias == LATEST:
            raise ConflictError("alias 'latest' is reserved: it always means the newest version")
        name, version = self.resolve(ref)
        with self.catalog.write() as tx:
            moved = tx.alias_version(name, alias) != version
            tx.set_alias(name, alias, version)
        return self.get(Ref(name, version=version), verify_files=False), moved

    def tag(self, ref: str, tag: str, remove: bool = False) -> Version:
        if not tag or len(tag) > 128 or "\n" in tag:
            raise RegistryError(f"invalid tag {tag!r}: 1-128 characters, one line")
        name, version = self.resolve(ref)
        with self.catalog.write() as tx:
            tx.set_tag(name, version, tag, present=not remove)
        return self.get(Ref(name, version=version), verify_files=False)

    def users_of(self, name: str, version: int) -> list[str]:
        """Aliases and A/B routes that point at a version."""
        users = [f"alias {name}:{a}" for (n, a), v in self.aliases().items() if n == name and v == version]
        for route in self.catalog.routes():
            if route.points_at(f"{name}@{version}"):
                users.append(f"A/B route {route.name!r}")
        return users

    def remove(self, ref: str, force: bool = False) -> Version:
        """Delete one version (refused while an alias or route points at it, unless forced)."""
        v = self.get(ref, verify_files=False)
        users = self.users_of(v.name, v.version)
        if users and not force:
            raise ConflictError(f"{v.ref} is in use by {', '.join(users)}; move them first or pass --force")
        with self.catalog.write() as tx:
            tx.delete_version(v.name, v.version)
        shutil.rmtree(v.path, ignore_errors=True)
        return v

    def gc(self, older_than_s: float = STAGING_GRACE_S) -> GcReport:
        """Remove version folders that no catalog row names, and abandoned staging folders.

        A version folder without a row is left by a push killed between its rename and its commit,
        or by `rm`; it is removed at once (the scan holds the catalog's write lock, so no push can be
        between the two steps meanwhile). A staging folder is a push still copying, or one that was
        killed: they look the same, so one is removed only when nothing in it changed for
        `older_than_s` seconds; younger ones are kept and reported.
        """
        report = GcReport()
        with self.catalog.write():
            known = {(v.name, v.version) for v in self.catalog.versions()}
            for name_dir in sorted((self.root / "versions").iterdir()):
                for vdir in sorted(name_dir.iterdir()) if name_dir.is_dir() else []:
                    if not vdir.name.isdigit() or (name_dir.name, int(vdir.name)) not in known:
                        shutil.rmtree(vdir, ignore_errors=True)
                        report.removed.append((vdir, "version folder that no catalog row names"))
                if name_dir.is_dir() and not any(name_dir.iterdir()):
                    name_dir.rmdir()
        for staging in sorted((self.root / ".staging").iterdir()):
            try:
                idle = time.time() - _newest_mtime(staging)
            except FileNotFoundError:  # the push committed (renamed it) meanwhile
                continue
            if idle >= older_than_s:
                shutil.rmtree(staging, ignore_errors=True)
                report.removed.append((staging, f"staging folder of a push idle for {_ago(idle)}"))
            else:
                report.kept.append(
                    (staging, f"staging folder changed {_ago(idle)} ago: may be a push in progress")
                )
        return report

    def verify_all(self) -> dict[str, str | None]:
        """Verify every version; map each ref to None (ok) or the integrity error."""
        report: dict[str, str | None] = {}
        for v in self.list_versions():
            try:
                verify(v.path, v.manifest_sha256, v.ref)
                report[v.ref] = None
            except IntegrityError as exc:
                report[v.ref] = str(exc)
        return report


def _newest_mtime(path: Path) -> float:
    """The latest modification time of a folder and the files directly in it (a copy touches both)."""
    times = [path.lstat().st_mtime]
    if path.is_dir():
        times += [p.lstat().st_mtime for p in path.iterdir()]
    return max(times)


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
