"""The catalog on SQLAlchemy Core: one implementation for SQLite (a registry folder) and
PostgreSQL (a shared registry). Tables, engines and migrations are in `registry.db`."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row

from registry import db as t
from registry.catalog import VersionRow
from registry.db import CatalogDB
from registry.routes import Route


class _Reads:
    """The reads both a transaction and the catalog offer, over some connection."""

    @contextmanager
    def _conn(self) -> Iterator[Connection]:
        raise NotImplementedError
        yield  # pragma: no cover

    def latest_version(self, name: str) -> int | None:
        with self._conn() as c:
            value = c.execute(sa.select(sa.func.max(t.versions.c.version)).where(t.versions.c.name == name))
            found = value.scalar()
        return None if found is None else int(found)

    def alias_version(self, name: str, alias: str) -> int | None:
        a = t.aliases.c
        with self._conn() as c:
            found = c.execute(sa.select(a.version).where(a.name == name, a.alias == alias)).scalar()
        return None if found is None else int(found)

    def route(self, name: str) -> Route | None:
        r = t.routes.c
        with self._conn() as c:
            row = c.execute(sa.select(r.name, r.spec, r.updated).where(r.name == name)).first()
        return _route(row) if row else None


def _route(row: Row[Any, Any, Any]) -> Route:
    return Route.from_spec(row.name, json.loads(row.spec), float(row.updated))


class SqlWrite(_Reads):
    """One write transaction (the change counter already moved; it commits with the rest)."""

    def __init__(self, db: CatalogDB, conn: Connection) -> None:
        self._db = db
        self._c = conn

    @contextmanager
    def _conn(self) -> Iterator[Connection]:
        yield self._c

    def issue_version(self, name: str) -> int:
        return self._db.next_version(self._c, name)

    def insert_version(self, row: VersionRow) -> None:
        self._c.execute(
            sa.insert(t.versions).values(
                name=row.name,
                version=row.version,
                created=row.created,
                base_model=row.base_model,
                base_sha256=row.base_sha256,
                manifest_sha256=row.manifest_sha256,
                parent=row.parent,
                lineage=json.dumps(row.lineage, default=str),
            )
        )

    def issue_at_least(self, name: str, version: int) -> None:
        n = t.names.c
        larger = sa.func.greatest if self._db.dialect == "postgresql" else sa.func.max  # SQLite: scalar max
        stmt = self._db.insert(t.names).values(name=name, last_version=version)
        stmt = stmt.on_conflict_do_update(
            index_elements=["name"], set_={"last_version": larger(n.last_version, version)}
        )
        self._c.execute(stmt)

    def delete_version(self, name: str, version: int) -> None:
        for table in (t.versions, t.aliases, t.tags):
            self._c.execute(sa.delete(table).where(table.c.name == name, table.c.version == version))

    def set_alias(self, name: str, alias: str, version: int) -> None:
        values = {"name": name, "alias": alias, "version": version, "updated": time.time()}
        self._db.upsert(self._c, t.aliases, values, ["name", "alias"])

    def set_tag(self, name: str, version: int, tag: str, present: bool) -> None:
        if present:
            self._db.upsert(
                self._c, t.tags, {"name": name, "version": version, "tag": tag}, ["name", "version", "tag"]
            )
        else:
            tg = t.tags.c
            self._c.execute(sa.delete(t.tags).where(tg.name == name, tg.version == version, tg.tag == tag))

    def put_route(self, route: Route) -> None:
        values = {"name": route.name, "spec": json.dumps(route.spec()), "updated": route.updated}
        self._db.upsert(self._c, t.routes, values, ["name"])

    def delete_route(self, name: str) -> None:
        self._c.execute(sa.delete(t.routes).where(t.routes.c.name == name))


class SqlCatalog(_Reads):
    """The catalog of one registry, in the database `db` points at."""

    def __init__(self, db: CatalogDB) -> None:
        self.db = db

    @contextmanager
    def _conn(self) -> Iterator[Connection]:
        with self.db.read() as conn:
            yield conn

    @contextmanager
    def write(self) -> Iterator[SqlWrite]:
        with self.db.write() as conn:
            yield SqlWrite(self.db, conn)

    def changes(self) -> int:
        return self.db.changes()

    def version(self, name: str, version: int) -> VersionRow | None:
        v = t.versions.c
        with self._conn() as c:
            row = c.execute(sa.select(t.versions).where(v.name == name, v.version == version)).first()
            return _version_row(c, row) if row else None

    def versions(self, name: str | None = None) -> list[VersionRow]:
        query = sa.select(t.versions).order_by(t.versions.c.name, t.versions.c.version)
        if name is not None:
            query = query.where(t.versions.c.name == name)
        with self._conn() as c:
            rows = c.execute(query).all()
            names = {r.name for r in rows}
            aliases = _grouped(c, t.aliases, "alias", names)
            tags = _grouped(c, t.tags, "tag", names)
        return [
            _to_row(r, aliases.get((r.name, r.version), ()), tags.get((r.name, r.version), ())) for r in rows
        ]

    def has_name(self, name: str) -> bool:
        with self._conn() as c:
            found = c.execute(sa.select(t.versions.c.name).where(t.versions.c.name == name).limit(1)).first()
        return found is not None

    def aliases(self) -> dict[tuple[str, str], int]:
        a = t.aliases.c
        with self._conn() as c:
            return {
                (r.name, r.alias): int(r.version) for r in c.execute(sa.select(a.name, a.alias, a.version))
            }

    def issued(self) -> dict[str, int]:
        n = t.names.c
        with self._conn() as c:
            return {row.name: int(row.last_version) for row in c.execute(sa.select(n.name, n.last_version))}

    def routes(self) -> list[Route]:
        r = t.routes.c
        with self._conn() as c:
            return [_route(row) for row in c.execute(sa.select(r.name, r.spec, r.updated).order_by(r.name))]


def _grouped(
    c: Connection, table: sa.Table, column: str, names: set[str]
) -> dict[tuple[str, int], tuple[str, ...]]:
    """(name, version) -> sorted values of `column` (aliases or tags), in one query."""
    out: dict[tuple[str, int], list[str]] = {}
    if not names:
        return {}
    query = sa.select(table.c.name, table.c.version, table.c[column]).order_by(table.c[column])
    if len(names) < 500:
        query = query.where(table.c.name.in_(sorted(names)))
    for row in c.execute(query):
        out.setdefault((row[0], int(row[1])), []).append(row[2])
    return {k: tuple(v) for k, v in out.items()}


def _version_row(c: Connection, row: Row[Any]) -> VersionRow:
    aliases = _grouped(c, t.aliases, "alias", {row.name}).get((row.name, int(row.version)), ())
    tags = _grouped(c, t.tags, "tag", {row.name}).get((row.name, int(row.version)), ())
    return _to_row(row, aliases, tags)


def _to_row(row: Row[Any], aliases: tuple[str, ...], tags: tuple[str, ...]) -> VersionRow:
    return VersionRow(
        name=row.name,
        version=int(row.version),
        created=float(row.created),
        base_model=row.base_model,
        base_sha256=row.base_sha256,
        manifest_sha256=row.manifest_sha256,
        parent=row.parent,
        lineage=json.loads(row.lineage),
        aliases=aliases,
        tags=tags,
    )
