"""The catalog in one SQLite file (WAL): `<registry>/catalog.sqlite`.

Writers take the database lock first (BEGIN IMMEDIATE), so concurrent writers from several
processes queue instead of failing at commit; readers see the last committed state.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from registry.catalog import VersionRow
from registry.errors import StorageError
from registry.routes import Route

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
FILE = "catalog.sqlite"

Query = Callable[[str, tuple[Any, ...]], list[sqlite3.Row]]


class _Reads:
    """The reads both a transaction and the catalog offer, over some way to run a query."""

    _query: Query

    def latest_version(self, name: str) -> int | None:
        value = self._query("SELECT MAX(version) FROM versions WHERE name=?", (name,))[0][0]
        return None if value is None else int(value)

    def alias_version(self, name: str, alias: str) -> int | None:
        rows = self._query("SELECT version FROM aliases WHERE name=? AND alias=?", (name, alias))
        return int(rows[0][0]) if rows else None

    def route(self, name: str) -> Route | None:
        rows = self._query("SELECT name, spec, updated FROM routes WHERE name=?", (name,))
        return _route(rows[0]) if rows else None


def _route(row: sqlite3.Row) -> Route:
    return Route.from_spec(row["name"], json.loads(row["spec"]), float(row["updated"]))


class SqliteWrite(_Reads):
    """One write transaction on an open connection."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        return self._db.execute(sql, args).fetchall()

    def issue_version(self, name: str) -> int:
        issued = self._db.execute("SELECT last_version FROM names WHERE name=?", (name,)).fetchone()
        version = (issued[0] if issued else 0) + 1
        self._db.execute("INSERT OR REPLACE INTO names VALUES (?, ?)", (name, version))
        return int(version)

    def insert_version(self, row: VersionRow) -> None:
        self._db.execute(
            "INSERT INTO versions VALUES (?,?,?,?,?,?,?,?)",
            (
                row.name,
                row.version,
                row.created,
                row.base_model,
                row.base_sha256,
                row.manifest_sha256,
                row.parent,
                json.dumps(row.lineage, default=str),
            ),
        )

    def delete_version(self, name: str, version: int) -> None:
        for table in ("versions", "aliases", "tags"):
            self._db.execute(f"DELETE FROM {table} WHERE name=? AND version=?", (name, version))

    def set_alias(self, name: str, alias: str, version: int) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO aliases VALUES (?,?,?,?)", (name, alias, version, time.time())
        )

    def set_tag(self, name: str, version: int, tag: str, present: bool) -> None:
        if present:
            self._db.execute("INSERT OR IGNORE INTO tags VALUES (?,?,?)", (name, version, tag))
        else:
            self._db.execute("DELETE FROM tags WHERE name=? AND version=? AND tag=?", (name, version, tag))

    def put_route(self, route: Route) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO routes VALUES (?,?,?)",
            (route.name, json.dumps(route.spec()), route.updated),
        )

    def delete_route(self, name: str) -> None:
        self._db.execute("DELETE FROM routes WHERE name=?", (name,))


class SqliteCatalog(_Reads):
    """The catalog of a registry folder."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with self._connection() as db:
            db.executescript(SCHEMA)

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        try:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=FULL")
                db.row_factory = sqlite3.Row
                yield db
            finally:
                db.close()
        except sqlite3.Error as exc:
            raise StorageError(f"catalog database: {exc}") from exc

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._connection() as db:
            return db.execute(sql, args).fetchall()

    @contextmanager
    def write(self) -> Iterator[SqliteWrite]:
        with self._connection() as db:
            try:
                db.execute("BEGIN IMMEDIATE")
                yield SqliteWrite(db)
                db.execute("UPDATE meta SET value = value + 1 WHERE key = 'changes'")
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise

    def changes(self) -> int:
        return int(self._query("SELECT value FROM meta WHERE key='changes'")[0][0])

    def version(self, name: str, version: int) -> VersionRow | None:
        rows = self._query("SELECT * FROM versions WHERE name=? AND version=?", (name, version))
        return self._row(rows[0]) if rows else None

    def versions(self, name: str | None = None) -> list[VersionRow]:
        if name is not None:
            rows = self._query("SELECT * FROM versions WHERE name=? ORDER BY version", (name,))
        else:
            rows = self._query("SELECT * FROM versions ORDER BY name, version")
        return [self._row(r) for r in rows]

    def has_name(self, name: str) -> bool:
        return bool(self._query("SELECT 1 FROM versions WHERE name=? LIMIT 1", (name,)))

    def aliases(self) -> dict[tuple[str, str], int]:
        return {(r[0], r[1]): int(r[2]) for r in self._query("SELECT name, alias, version FROM aliases", ())}

    def routes(self) -> list[Route]:
        return [_route(r) for r in self._query("SELECT name, spec, updated FROM routes ORDER BY name", ())]

    def _row(self, row: sqlite3.Row) -> VersionRow:
        name, version = row["name"], int(row["version"])
        aliases = self._query(
            "SELECT alias FROM aliases WHERE name=? AND version=? ORDER BY alias", (name, version)
        )
        tags = self._query("SELECT tag FROM tags WHERE name=? AND version=? ORDER BY tag", (name, version))
        return VersionRow(
            name=name,
            version=version,
            created=row["created"],
            base_model=row["base_model"],
            base_sha256=row["base_sha256"],
            manifest_sha256=row["manifest_sha256"],
            parent=row["parent"],
            lineage=json.loads(row["lineage"]),
            aliases=tuple(a[0] for a in aliases),
            tags=tuple(t[0] for t in tags),
        )
