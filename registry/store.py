"""The registry: a catalog database plus one immutable folder of files per version.

Two backends, one code path (`registry.db`, `registry.sql_catalog`: SQLAlchemy Core):
- a folder (the default):
      catalog.sqlite          versions, aliases, tags, routes, change counter, A/B evidence
      versions/<name>/<n>/    adapter files, lineage.json, README.md, manifest.json
      .staging/               pushes in progress (never read)
- a shared registry: the catalog in PostgreSQL (`postgresql://...`) and the files in an
  artifact store (a shared folder or an fsspec URL: `registry.artifacts`).

Catalog state goes through `registry.catalog.Catalog`; this class owns the rules that tie the
catalog to the files. A push assembles the version in a staging folder, writes the manifest,
fsyncs, and then, inside one write transaction, takes the next number, publishes the files and
inserts the catalog row. A crash leaves either the old state or the new one: files without a
row are orphans that readers never see and `gc` removes. Readers verify every file against the
manifest before handing a version out (remote stores: after copying it into a local cache).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from registry.adapter import AdapterInfo, validate_adapter
from registry.artifacts import ArtifactStore, FolderStore, open_store
from registry.card import write_card
from registry.catalog import Catalog, VersionRow
from registry.db import CATALOG_FILE, CatalogDB, is_database_url
from registry.errors import ConflictError, IntegrityError, NotFoundError, RegistryError
from registry.evaluations import EvaluationStore
from registry.evidence_store import EvidenceStore
from registry.invites import InviteStore
from registry.manifest import fsync_tree, verify, write_manifest
from registry.payloads import PayloadStore
from registry.refs import Ref, check_name, parse_ref
from registry.reviews import ReviewStore
from registry.rollouts import RolloutStore
from registry.sql_catalog import SqlCatalog

LATEST = "latest"
KEEP_FILES = (
    "lineage.json",
    "metrics.json",
    "config.yaml",
    "train_log.jsonl",
    "loss.png",
    "predictions.jsonl",
    "heldout.json",
)


STAGING_GRACE_S = 3600.0
"""`gc` keeps staging folders changed more recently than this: they may be pushes still copying."""


@dataclass
class GcReport:
    """What `gc` removed and what it kept, each with the reason."""

    removed: list[tuple[str, str]] = field(default_factory=list)
    kept: list[tuple[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class Version(VersionRow):
    """One immutable adapter version: its catalog row and the local folder of its files."""

    path: Path = field(kw_only=True)

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


def default_location() -> str:
    """`LORA_PLATFORM_REGISTRY` (a folder or a database URL), else `<home>/registry`."""
    from registry.paths import home

    return os.environ.get("LORA_PLATFORM_REGISTRY") or str(home() / "registry")


class Registry:
    """A registry folder, or a catalog database URL plus an artifact store.

    Safe for several processes and machines at once: catalog transactions serialize writers,
    version numbers are issued inside them, files are published before their row commits."""

    def __init__(self, location: str | Path | None = None, artifacts: str | Path | None = None) -> None:
        spec = str(location) if location else default_location()
        self.root: Path | None = None
        """The registry folder (None for a database registry)."""
        self._store: ArtifactStore | None = None
        self._artifacts: str | Path | None = None
        if is_database_url(spec):
            self._artifacts = artifacts or os.environ.get("LORA_PLATFORM_ARTIFACTS")
            db = CatalogDB(spec)
        else:
            self.root = Path(spec).expanduser()
            with _creating(self.root):
                self._store = FolderStore(self.root)
                db = CatalogDB.for_folder(self.root)
        self.db = db
        self.catalog: Catalog = SqlCatalog(db)
        self.location = str(self.root) if self.root is not None else db.location
        """Where the catalog is, for messages: the folder, or the URL without its password."""

    @property
    def store(self) -> ArtifactStore:
        """Where version files live (a database registry opens it on first use, so commands that
        read only the catalog, such as `ab report`, need no artifact store)."""
        if self._store is None:
            if not self._artifacts:
                raise RegistryError(
                    "a database registry keeps its files in an artifact store: give --artifacts "
                    "(or LORA_PLATFORM_ARTIFACTS) a shared folder or an fsspec URL such as s3://bucket/loras"
                )
            from registry.paths import home

            self._store = open_store(self._artifacts, home() / "artifacts")
        return self._store

    @property
    def artifacts_location(self) -> str:
        """Where version files live, as a folder or URL: the registry folder, or the artifact store
        of a database registry (long jobs keep their own files beside them: training checkpoints)."""
        if self.root is not None:
            return str(self.root)
        return self.store.location

    def evidence(self) -> EvidenceStore:
        """The A/B evidence rows (in the catalog database)."""
        return EvidenceStore(self.db)

    def payloads(self) -> PayloadStore:
        """The logged payloads and their feedback (in the catalog database)."""
        return PayloadStore(self.db)

    def invites(self) -> InviteStore:
        """The review pages' invite tokens (in the catalog database)."""
        return InviteStore(self.db)

    def rollouts(self) -> RolloutStore:
        """The rollouts, their events and the controller leases (in the catalog database)."""
        return RolloutStore(self.db)

    def reviews(self) -> ReviewStore:
        """The review sets, their items and ratings (in the catalog database)."""
        return ReviewStore(self.db)

    def evaluations(self) -> EvaluationStore:
        """Evaluations of versions made after their push, e.g. lm-evaluation-harness runs."""
        return EvaluationStore(self.db)

    def close(self) -> None:
        self.db.dispose()

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
        with self.store.staging() as staging:
            for f in ("adapter_model.safetensors", "adapter_config.json"):
                shutil.copyfile(Path(adapter_dir) / f, staging / f)
            for rel, src in (extra_files or {}).items():
                if Path(rel).name != rel or rel in ("manifest.json", "README.md"):
                    raise RegistryError(f"push {name}: extra file name {rel!r} is not allowed")
                shutil.copyfile(src, staging / rel)
            (staging / "lineage.json").write_text(json.dumps(lineage, indent=2, default=str) + "\n")
            return self._commit(name, staging, lineage, info, parent)

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
            self.store.publish(staging, name, version)
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
            raise NotFoundError(f"no adapter named {r.name!r} in the registry", path=self.location)
        return r.name, latest

    def _missing_name(self, name: str) -> None:
        if not self.catalog.has_name(name):
            raise NotFoundError(f"no adapter named {name!r} in the registry", path=self.location)

    def get(self, ref: str | Ref, verify_files: bool = True, rehash_unchanged: bool = True) -> Version:
        """The version a reference points at; with verify_files, its files are fetched (remote
        stores) and every file is checked first (rehash_unchanged=False: files this process hashed
        before and that have not changed since are not read again; manifest.verify)."""
        name, version = self.resolve(ref)
        row = self.catalog.version(name, version)
        if row is None:  # removed between the two reads
            raise NotFoundError(f"{name}@{version}: version {version} of {name!r} does not exist")
        v = self._version(row, fetch=verify_files)
        if verify_files:
            verify(v.path, v.manifest_sha256, v.ref, rehash_unchanged)
        return v

    def _version(self, row: VersionRow, fetch: bool = False) -> Version:
        return Version(**vars(row), path=self._path(row, fetch))

    def _path(self, row: VersionRow, fetch: bool) -> Path:
        if self._store is None and not self._artifacts and not fetch:
            # a database registry opened without its artifact store (reading the catalog only):
            # the folder's place inside the store, which is all a listing can say
            return Path("versions") / row.name / str(row.version)
        return self.store.local_path(row.name, row.version, row.manifest_sha256, fetch=fetch)

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
        self.store.delete(v.name, v.version)
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
            for orphan in self.store.orphans(known):
                self.store.remove(orphan)
                report.removed.append((orphan, "version folder that no catalog row names"))
        for staging, idle in self.store.staging_folders():
            if idle >= older_than_s:
                self.store.remove(staging)
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
                path = self.store.local_path(v.name, v.version, v.manifest_sha256, fetch=True)
                verify(path, v.manifest_sha256, v.ref)
                report[v.ref] = None
            except IntegrityError as exc:
                report[v.ref] = str(exc)
        return report


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


CREATE_LOCK = ".create.lock"
_SKELETON = {CREATE_LOCK, "versions", ".staging"}
"""What a registry folder holds while it is being created, before its catalog exists."""


@contextmanager
def _creating(root: Path) -> Iterator[None]:
    """Check `root` is a registry folder or may become one; while its catalog does not exist yet,
    hold a lock file in it, so processes creating the same registry at once (two first users,
    every rank of a distributed run) make it one after the other instead of refusing each other's
    half-made folder. An existing registry is opened without the lock."""
    _check_folder(root)
    if (root / CATALOG_FILE).is_file():
        yield
        return
    root.mkdir(parents=True, exist_ok=True)
    with open(root / CREATE_LOCK, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            _check_folder(root)
            yield
        finally:  # safe to remove: once the catalog exists, no one needs the lock
            (root / CREATE_LOCK).unlink(missing_ok=True)
            fcntl.flock(fh, fcntl.LOCK_UN)


def _check_folder(root: Path) -> None:
    if root.exists() and not root.is_dir():
        raise RegistryError(f"{root}: registry path exists and is not a folder")
    if not root.is_dir() or (root / CATALOG_FILE).is_file():
        return
    if {p.name for p in root.iterdir()} - _SKELETON:
        raise RegistryError(f"{root}: folder is not a registry (no {CATALOG_FILE}); choose an empty folder")
