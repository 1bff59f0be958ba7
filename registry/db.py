"""The catalog database: one SQLAlchemy Core schema and code path for SQLite and PostgreSQL.

A registry folder keeps its catalog in `catalog.sqlite` (WAL); a shared registry keeps it in
PostgreSQL (`postgresql://user:password@host:port/db`). Both hold the same tables, created and
upgraded by the Alembic migrations in `registry/migrations/` when a registry is opened.

Every write transaction starts by bumping the change counter (`meta.changes`): on SQLite the
transaction is `BEGIN IMMEDIATE`, on PostgreSQL the counter's row lock serializes writers the
same way, so a check-then-write inside one transaction cannot race another writer. Servers poll
the counter (and PostgreSQL also gets a `NOTIFY lora_platform_changes`) to see pushes, alias
moves and route changes made from any machine.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError

from registry.errors import RegistryError, StorageError, UnavailableError

metadata = sa.MetaData()

versions = sa.Table(
    "versions",
    metadata,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("base_model", sa.Text, nullable=False),
    sa.Column("base_sha256", sa.Text, nullable=False),
    sa.Column("manifest_sha256", sa.Text, nullable=False),
    sa.Column("parent", sa.Integer),
    sa.Column("lineage", sa.Text, nullable=False),
)
aliases = sa.Table(
    "aliases",
    metadata,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("alias", sa.Text, primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("updated", sa.Float, nullable=False),
)
tags = sa.Table(
    "tags",
    metadata,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("tag", sa.Text, primary_key=True),
)
routes = sa.Table(
    "routes",
    metadata,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("spec", sa.Text, nullable=False),
    sa.Column("updated", sa.Float, nullable=False),
)
names = sa.Table(
    "names",
    metadata,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("last_version", sa.Integer, nullable=False),
)
meta = sa.Table(
    "meta",
    metadata,
    sa.Column("key", sa.Text, primary_key=True),
    sa.Column("value", sa.BigInteger, nullable=False),
)
requests = sa.Table(
    "requests",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("ts", sa.Float, nullable=False),
    sa.Column("route", sa.Text, nullable=False),
    sa.Column("variant", sa.Text, nullable=False),
    sa.Column("user_hash", sa.Text),
    sa.Column("latency_s", sa.Float),
    sa.Column("ttft_s", sa.Float),
    sa.Column("prompt_tokens", sa.Integer),
    sa.Column("completion_tokens", sa.Integer),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("shadow", sa.Integer, nullable=False, server_default="0"),
    sa.Column("output", sa.Text),
    sa.Column("key_hash", sa.Text),
    sa.Index("requests_route", "route", "variant"),
)
feedback = sa.Table(
    "feedback",
    metadata,
    sa.Column("completion_id", sa.Text, nullable=False),
    sa.Column("ts", sa.Float, nullable=False),
    sa.Column("route", sa.Text, nullable=False),
    sa.Column("variant", sa.Text, nullable=False),
    sa.Column("score", sa.Float),
    sa.Column("thumbs", sa.Integer),
    sa.Column("comment", sa.Text),
    sa.Index("feedback_route", "route", "variant"),
    sa.Index("feedback_completion", "completion_id"),
)

rollouts = sa.Table(
    "rollouts",
    metadata,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("spec", sa.Text, nullable=False),
    sa.Column("state", sa.Text, nullable=False),
    sa.Column("step", sa.Integer, nullable=False),
    sa.Column("step_started", sa.Float, nullable=False),
    sa.Column("evaluated", sa.Float, nullable=False),
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("updated", sa.Float, nullable=False),
    sa.Column("reason", sa.Text),
)
rollout_events = sa.Table(
    "rollout_events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("ts", sa.Float, nullable=False),
    sa.Column("rollout", sa.Text, nullable=False),
    sa.Column("step", sa.Integer, nullable=False),
    sa.Column("weight", sa.Float, nullable=False),
    sa.Column("decision", sa.Text, nullable=False),
    sa.Column("numbers", sa.Text, nullable=False),
    sa.Column("reason", sa.Text),
    sa.Column("holder", sa.Text),
    sa.Index("rollout_events_rollout", "rollout", "ts"),
)
leases = sa.Table(
    "leases",
    metadata,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("holder", sa.Text, nullable=False),
    sa.Column("expires", sa.Float, nullable=False),
)
payloads = sa.Table(
    "payloads",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("ts", sa.Float, nullable=False),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("version", sa.Text, nullable=False),
    sa.Column("request", sa.Text, nullable=False),
    sa.Column("completion", sa.Text),
    sa.Column("finish_reason", sa.Text),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("latency_s", sa.Float),
    sa.Column("ttft_s", sa.Float),
    sa.Column("prompt_tokens", sa.Integer),
    sa.Column("completion_tokens", sa.Integer),
    sa.Column("prompt_sha256", sa.Text),
    sa.Column("key_hash", sa.Text),
    sa.Index("payloads_name", "name", "ts"),
    sa.Index("payloads_version", "version", "ts"),
)
payload_feedback = sa.Table(
    "payload_feedback",
    metadata,
    sa.Column("completion_id", sa.Text, nullable=False),
    sa.Column("ts", sa.Float, nullable=False),
    sa.Column("score", sa.Float),
    sa.Column("thumbs", sa.Integer),
    sa.Column("comment", sa.Text),
    sa.Index("payload_feedback_id", "completion_id"),
)

review_sets = sa.Table(
    "review_sets",
    metadata,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("spec", sa.Text, nullable=False),
    sa.Column("version_a", sa.Text, nullable=False),
    sa.Column("version_b", sa.Text, nullable=False),
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("summary", sa.Text),
    sa.Column("summarized", sa.Float),
)
review_items = sa.Table(
    "review_items",
    metadata,
    sa.Column("review", sa.Text, primary_key=True),
    sa.Column("item", sa.Integer, primary_key=True),
    sa.Column("messages", sa.Text, nullable=False),
    sa.Column("answer_a", sa.Text, nullable=False),
    sa.Column("answer_b", sa.Text, nullable=False),
    sa.Column("a_on_left", sa.Integer, nullable=False),
    sa.Column("stratum", sa.Text, nullable=False),
)
review_assignments = sa.Table(
    "review_assignments",
    metadata,
    sa.Column("review", sa.Text, primary_key=True),
    sa.Column("item", sa.Integer, primary_key=True),
    sa.Column("reviewer", sa.Text, primary_key=True),
    sa.Column("assigned", sa.Float, nullable=False),
    sa.Column("skipped", sa.Integer, nullable=False, server_default="0"),
    sa.Index("review_assignments_reviewer", "review", "reviewer"),
)
review_ratings = sa.Table(
    "review_ratings",
    metadata,
    sa.Column("review", sa.Text, primary_key=True),
    sa.Column("item", sa.Integer, primary_key=True),
    sa.Column("reviewer", sa.Text, primary_key=True),
    sa.Column("scores", sa.Text, nullable=False),
    sa.Column("preference", sa.Text),
    sa.Column("complete", sa.Integer, nullable=False, server_default="0"),
    sa.Column("updated", sa.Float, nullable=False),
)
review_invites = sa.Table(
    "review_invites",
    metadata,
    sa.Column("token_sha256", sa.Text, primary_key=True),
    sa.Column("reviewer", sa.Text, nullable=False),
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("revoked", sa.Float),
    sa.Index("review_invites_reviewer", "reviewer"),
)
evaluations = sa.Table(
    "evaluations",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("record", sa.Text, nullable=False),
    sa.Index("evaluations_version", "name", "version"),
)

NOTIFY_CHANNEL = "lora_platform_changes"
CATALOG_FILE = "catalog.sqlite"
_URL_RE = re.compile(r"^postgres(ql)?(\+\w+)?://", re.IGNORECASE)


def storable(row: dict[str, Any]) -> dict[str, Any]:
    """`row` with NUL characters in its text replaced by U+FFFD: PostgreSQL text cannot hold NUL
    (a model's answer or a user's comment can), and a refused batch would be retried forever."""
    return {k: v.replace("\x00", "\ufffd") if isinstance(v, str) else v for k, v in row.items()}


def is_database_url(text: str | Path | None) -> bool:
    """True for `postgresql://...` (a shared catalog), False for a folder path."""
    return isinstance(text, str) and bool(_URL_RE.match(text))


def redact(url: str) -> str:
    """The URL with its password replaced by `***` (for logs, errors and `registry show`)."""
    try:
        return sa.make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return re.sub(r"//([^:/@]*):[^@]*@", r"//\1:***@", url)


class CatalogDB:
    """A connection pool to one catalog database, migrated to the current schema on open."""

    def __init__(self, url: str, registry_root: Path | None = None, timeout_s: float = 30.0) -> None:
        self.url = url
        self.location = redact(url)
        self.engine = _make_engine(url, timeout_s)
        self.dialect = self.engine.dialect.name
        from registry.migrations import upgrade

        try:
            upgrade(self.engine, registry_root)
        except DBAPIError as exc:
            self.engine.dispose()
            raise self.translate(exc) from exc

    @classmethod
    def for_folder(cls, root: Path, timeout_s: float = 30.0) -> CatalogDB:
        """The catalog of a registry folder; `timeout_s` is how long a writer waits for the lock."""
        return cls(f"sqlite:///{root / CATALOG_FILE}", registry_root=root, timeout_s=timeout_s)

    def translate(self, exc: DBAPIError) -> RegistryError:
        """A database error as ours: unreachable -> UnavailableError; the password never shown."""
        detail = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else type(exc).__name__
        detail = detail.replace(self.url, self.location)
        password = sa.make_url(self.url).password if self.dialect == "postgresql" else None
        if password:
            detail = detail.replace(str(password), "***")
        if isinstance(exc, OperationalError) and self.dialect == "postgresql":
            return UnavailableError(f"catalog database {self.location} is unavailable: {detail}")
        return StorageError(f"catalog database {self.location}: {detail}")

    @contextmanager
    def read(self) -> Iterator[Connection]:
        try:
            with self.engine.connect() as conn:
                yield conn
        except DBAPIError as exc:
            raise self.translate(exc) from exc

    @contextmanager
    def write(self, bump: bool = True) -> Iterator[Connection]:
        """One write transaction. With `bump` (catalog changes) the change counter moves first,
        which also serializes writers; evidence rows are written without it."""
        try:
            with self.engine.connect().execution_options(lp_write=True) as conn, conn.begin():
                if bump:
                    value = conn.execute(
                        sa.update(meta)
                        .where(meta.c.key == "changes")
                        .values(value=meta.c.value + 1)
                        .returning(meta.c.value)
                    ).scalar_one()
                    if self.dialect == "postgresql":
                        conn.execute(sa.select(sa.func.pg_notify(NOTIFY_CHANNEL, str(value))))
                yield conn
        except DBAPIError as exc:
            raise self.translate(exc) from exc

    def changes(self) -> int:
        with self.read() as conn:
            return int(conn.execute(sa.select(meta.c.value).where(meta.c.key == "changes")).scalar_one())

    def upsert(self, conn: Connection, table: sa.Table, values: dict[str, Any], keys: list[str]) -> None:
        """INSERT ... ON CONFLICT (keys) DO UPDATE (or DO NOTHING), in either dialect."""
        stmt = self.insert(table).values(**values)
        updates = {k: v for k, v in values.items() if k not in keys}
        stmt = (
            stmt.on_conflict_do_update(index_elements=keys, set_=updates)
            if updates
            else (stmt.on_conflict_do_nothing(index_elements=keys))
        )
        conn.execute(stmt)

    def next_version(self, conn: Connection, name: str) -> int:
        """Issue the next version number of `name`: one atomic statement, so writers on several
        machines get distinct numbers, and numbers are never reused (even after `rm`)."""
        stmt = self.insert(names).values(name=name, last_version=1)
        stmt = stmt.on_conflict_do_update(
            index_elements=["name"], set_={"last_version": names.c.last_version + 1}
        ).returning(names.c.last_version)
        return int(conn.execute(stmt).scalar_one())

    def insert(self, table: sa.Table) -> Any:
        """The dialect's INSERT, which has `on_conflict_do_update` / `_do_nothing`."""
        if self.dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            return pg_insert(table)
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(table)

    def dispose(self) -> None:
        self.engine.dispose()


def _make_engine(url: str, timeout_s: float) -> Engine:
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"timeout": timeout_s, "check_same_thread": False})

        @sa.event.listens_for(engine, "connect")
        def _connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # transactions are begun below, not by pysqlite
            dbapi_conn.execute("PRAGMA journal_mode=WAL")
            dbapi_conn.execute("PRAGMA synchronous=FULL")

        @sa.event.listens_for(engine, "begin")
        def _begin(conn: Connection) -> None:
            write = conn.get_execution_options().get("lp_write")
            conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

        return engine
    if not is_database_url(url):
        raise RegistryError(f"unsupported catalog URL {redact(url)!r}: use a folder or postgresql://...")
    driver_url = sa.make_url(url).set(drivername="postgresql+psycopg")
    return sa.create_engine(
        driver_url,
        pool_pre_ping=True,
        pool_size=4,
        max_overflow=8,
        pool_recycle=600,
        connect_args={"connect_timeout": 5, "application_name": "lora-platform"},
    )
