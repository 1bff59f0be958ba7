"""The local registry: a SQLite catalog (WAL) plus one immutable folder per version.

Layout of a registry root:
    catalog.sqlite                       names, versions, aliases, tags, routes, change counter
    versions/<name>/<n>/                 adapter files, lineage.json, README.md, manifest.json
    .staging/                            pushes in progress (never read)

A push copies into `.staging`, writes the manifest, fsyncs, and then, inside one write
transaction, renames the folder into place and inserts the catalog row. A crash leaves either
the old state or the new one: a folder without a row is an orphan that readers never see and
`gc` removes. Readers verify every file against the manifest before handing a version out.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from registry.adapter import AdapterInfo, validate_adapter
from registry.card import write_card
from registry.errors import ConflictError, IntegrityError, NotFoundError, RegistryError
from registry.manifest import fsync_tree, verify, write_manifest
from registry.refs import Ref, check_name, parse_ref

SCHEMA = """
CREATE TABLE IF NOT EXISTS versions (
    name TEXT NOT NULL, version INTEGER NOT NULL, created REAL NOT NULL,
    base_model TEXT NOT NULL, base_sha256 TEXT NOT NULL, manifest_sha256 TEXT NOT NULL,
    parent INTEGER, lineage TEXT NOT NULL, PRIMARY KEY (name, version));
CREATE TABLE IF NOT EXISTS aliases (
    name TEXT NOT NULL, alias TEXT NOT NULL, version INTEGER NOT NULL, updated REAL NOT NULL,
    PRIMARY KEY (name, alias));
CREATE TABLE IF NOT EXISTS tags (
    name TEXT NOT NULL, version INTEGER NOT NULL, tag TEXT NOT NULL, PRIMARY KEY (name, version, tag));
CREATE TABLE IF NOT EXISTS routes (
    name TEXT PRIMARY KEY, spec TEXT NOT NULL, updated REAL NOT NULL);
CREATE TABLE IF NOT EXISTS names (name TEXT PRIMARY KEY, last_version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta VALUES ('changes', 0);
"""
LATEST = "latest"
KEEP_FILES = (
    "lineage.json",
    "metrics.json",
    "config.yaml",
    "train_log.jsonl",
    "loss.png",
    "predictions.jsonl",
)


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
    from registry.basemodels import home

    return Path(os.environ.get("LORA_PLATFORM_REGISTRY") or home() / "registry")


class LocalRegistry:
    """A registry folder. Safe for several processes at once (SQLite locking + atomic renames)."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root else default_root()
        if self.root.exists() and not self.root.is_dir():
            raise RegistryError(f"{self.root}: registry path exists and is not a folder")
        if self.root.is_dir() and any(self.root.iterdir()) and not (self.root / "catalog.sqlite").is_file():
            raise RegistryError(
                f"{self.root}: folder is not a registry (no catalog.sqlite); choose an empty folder"
            )
        (self.root / "versions").mkdir(parents=True, exist_ok=True)
        (self.root / ".staging").mkdir(exist_ok=True)
        with self._connect() as db:
            db.executescript(SCHEMA)

    # -- plumbing ------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.root / "catalog.sqlite", timeout=30, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.row_factory = sqlite3.Row
        return db

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE) that bumps the change counter on commit."""
        db = self._connect()
        try:
            db.execute("BEGIN IMMEDIATE")
            yield db
            db.execute("UPDATE meta SET value = value + 1 WHERE key = 'changes'")
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        finally:
            db.close()

    def _read(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        db = self._connect()
        try:
            return db.execute(sql, args).fetchall()
        finally:
            db.close()

    def version_dir(self, name: str, version: int) -> Path:
        path = (self.root / "versions" / check_name(name) / str(int(version))).resolve()
        if not path.is_relative_to((self.root / "versions").resolve()):
            raise IntegrityError(f"{name}@{version}: version folder escapes the registry root")
        return path

    def changes(self) -> int:
        """A counter bumped by every push, alias move, tag, rm and route change (cheap to poll)."""
        return int(self._read("SELECT value FROM meta WHERE key='changes'")[0][0])

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
        rows = self._read("SELECT spec FROM routes WHERE name=?", (name,))
        if rows and any(not v["ref"].startswith(f"{name}@") for v in json.loads(rows[0][0])["variants"]):
            raise ConflictError(
                f"{name!r} is the name of an A/B route over other adapters; choose another adapter name"
            )

    def _commit(
        self, name: str, staging: Path, lineage: dict[str, Any], info: AdapterInfo, parent: int | None
    ) -> Version:
        with self._write() as db:
            # version numbers are never reused, even after `rm`: a number names one set of weights
            issued = db.execute("SELECT last_version FROM names WHERE name=?", (name,)).fetchone()
            version = (issued[0] if issued else 0) + 1
            db.execute("INSERT OR REPLACE INTO names VALUES (?, ?)", (name, version))
            row = db.execute("SELECT MAX(version) FROM versions WHERE name=?", (name,)).fetchone()
            if parent is None and row[0]:
                parent = row[0]
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
            created = time.time()
            db.execute(
                "INSERT INTO versions VALUES (?,?,?,?,?,?,?,?)",
                (
                    name,
                    version,
                    created,
                    lineage["base_model"],
                    lineage["base_model_sha256"],
                    manifest_sha,
                    parent,
                    json.dumps(lineage, default=str),
                ),
            )
        return self.get(Ref(name, version=version), verify_files=False)

    # -- read ----------------------------------------------------------------------------
    def resolve(self, ref: str | Ref) -> tuple[str, int]:
        """Resolve a reference to (name, version) without touching files."""
        r = parse_ref(ref) if isinstance(ref, str) else ref
        if r.version is not None:
            rows = self._read("SELECT version FROM versions WHERE name=? AND version=?", (r.name, r.version))
            if not rows:
                self._missing_name(r.name)
                raise NotFoundError(f"{r}: version {r.version} of {r.name!r} does not exist")
            return r.name, r.version
        if r.alias is not None and r.alias != LATEST:
            rows = self._read("SELECT version FROM aliases WHERE name=? AND alias=?", (r.name, r.alias))
            if not rows:
                self._missing_name(r.name)
                raise NotFoundError(f"{r}: alias {r.alias!r} of {r.name!r} does not exist")
            return r.name, int(rows[0][0])
        rows = self._read("SELECT MAX(version) FROM versions WHERE name=?", (r.name,))
        if rows[0][0] is None:
            self._missing_name(r.name)
        return r.name, int(rows[0][0])

    def _missing_name(self, name: str) -> None:
        if not self._read("SELECT 1 FROM versions WHERE name=? LIMIT 1", (name,)):
            raise NotFoundError(f"no adapter named {name!r} in the registry", path=self.root)

    def get(self, ref: str | Ref, verify_files: bool = True) -> Version:
        """The version a reference points at; with verify_files, every file is checked first."""
        name, version = self.resolve(ref)
        row = self._read("SELECT * FROM versions WHERE name=? AND version=?", (name, version))[0]
        v = self._version(row)
        if verify_files:
            verify(v.path, v.manifest_sha256, v.ref)
        return v

    def _version(self, row: sqlite3.Row) -> Version:
        name, version = row["name"], int(row["version"])
        aliases = self._read(
            "SELECT alias FROM aliases WHERE name=? AND version=? ORDER BY alias", (name, version)
        )
        tags = self._read("SELECT tag FROM tags WHERE name=? AND version=? ORDER BY tag", (name, version))
        return Version(
            name=name,
            version=version,
            path=self.version_dir(name, version),
            created=row["created"],
            base_model=row["base_model"],
            base_sha256=row["base_sha256"],
            manifest_sha256=row["manifest_sha256"],
            parent=row["parent"],
            lineage=json.loads(row["lineage"]),
            aliases=tuple(a[0] for a in aliases),
            tags=tuple(t[0] for t in tags),
        )

    def list_versions(self, name: str | None = None) -> list[Version]:
        if name is not None:
            check_name(name)
            rows = self._read("SELECT * FROM versions WHERE name=? ORDER BY version", (name,))
        else:
            rows = self._read("SELECT * FROM versions ORDER BY name, version")
        return [self._version(r) for r in rows]

    def aliases(self) -> dict[tuple[str, str], int]:
        return {(r[0], r[1]): int(r[2]) for r in self._read("SELECT name, alias, version FROM aliases")}

    # -- mutate --------------------------------------------------------------------------
    def set_alias(self, ref: str, alias: str) -> tuple[Version, bool]:
        """Point `name:alias` at the version `ref` names; returns (version, moved)."""
        check_name(alias, "alias")
        if alias == LATEST:
            raise ConflictError("alias 'latest' is reserved: it always means the newest version")
        name, version = self.resolve(ref)
        with self._write() as db:
            row = db.execute("SELECT version FROM aliases WHERE name=? AND alias=?", (name, alias)).fetchone()
            moved = row is None or int(row[0]) != version
            db.execute("INSERT OR REPLACE INTO aliases VALUES (?,?,?,?)", (name, alias, version, time.time()))
        return self.get(Ref(name, version=version), verify_files=False), moved

    def remove_alias(self, name: str, alias: str) -> None:
        with self._write() as db:
            cur = db.execute("DELETE FROM aliases WHERE name=? AND alias=?", (check_name(name), alias))
            if cur.rowcount == 0:
                raise NotFoundError(f"{name}:{alias}: no such alias")

    def tag(self, ref: str, tag: str, remove: bool = False) -> Version:
        if not tag or len(tag) > 128 or "\n" in tag:
            raise RegistryError(f"invalid tag {tag!r}: 1-128 characters, one line")
        name, version = self.resolve(ref)
        with self._write() as db:
            if remove:
                db.execute("DELETE FROM tags WHERE name=? AND version=? AND tag=?", (name, version, tag))
            else:
                db.execute("INSERT OR IGNORE INTO tags VALUES (?,?,?)", (name, version, tag))
        return self.get(Ref(name, version=version), verify_files=False)

    def users_of(self, name: str, version: int) -> list[str]:
        """Aliases and A/B routes that point at a version."""
        users = [f"alias {name}:{a}" for (n, a), v in self.aliases().items() if n == name and v == version]
        for rname, spec in self._read("SELECT name, spec FROM routes"):
            refs = [v["ref"] for v in json.loads(spec).get("variants", [])]
            if f"{name}@{version}" in refs:
                users.append(f"A/B route {rname!r}")
        return users

    def remove(self, ref: str, force: bool = False) -> Version:
        """Delete one version (refused while an alias or route points at it, unless forced)."""
        v = self.get(ref, verify_files=False)
        users = self.users_of(v.name, v.version)
        if users and not force:
            raise ConflictError(f"{v.ref} is in use by {', '.join(users)}; move them first or pass --force")
        with self._write() as db:
            db.execute("DELETE FROM versions WHERE name=? AND version=?", (v.name, v.version))
            db.execute("DELETE FROM aliases WHERE name=? AND version=?", (v.name, v.version))
            db.execute("DELETE FROM tags WHERE name=? AND version=?", (v.name, v.version))
        shutil.rmtree(v.path, ignore_errors=True)
        return v

    def gc(self) -> list[Path]:
        """Remove version folders with no catalog row and stale staging folders."""
        known = {(v.name, v.version) for v in self.list_versions()}
        removed = []
        for name_dir in sorted((self.root / "versions").iterdir()):
            for vdir in sorted(name_dir.iterdir()) if name_dir.is_dir() else []:
                if not vdir.name.isdigit() or (name_dir.name, int(vdir.name)) not in known:
                    shutil.rmtree(vdir, ignore_errors=True)
                    removed.append(vdir)
            if name_dir.is_dir() and not any(name_dir.iterdir()):
                name_dir.rmdir()
        for stale in (self.root / ".staging").iterdir():
            if time.time() - stale.stat().st_mtime > 3600:
                shutil.rmtree(stale, ignore_errors=True)
                removed.append(stale)
        return removed

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


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
