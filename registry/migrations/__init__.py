"""Versioned schema migrations of the catalog database (Alembic), run when a registry is opened.

`0001` is the schema of the first release (a registry folder made by it upgrades in place);
later revisions add to it. Opening a registry that is already at the head costs one query.
"""

from __future__ import annotations

import functools
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

HERE = Path(__file__).parent
_LOCK_ID = 0x10BA_0001  # PostgreSQL advisory lock held while migrating: one migrator at a time


def _config(registry_root: Path | None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(HERE))
    cfg.attributes["registry_root"] = registry_root
    return cfg


@functools.cache
def head() -> str:
    """The newest revision (the scripts do not change while a process runs: read them once)."""
    head = ScriptDirectory.from_config(_config(None)).get_current_head()
    assert head is not None
    return head


def current(engine: sa.Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: sa.Engine, registry_root: Path | None = None) -> None:
    """Bring the catalog to the newest schema (no-op when it is there)."""
    if current(engine) == head():
        return
    cfg = _config(registry_root)
    with engine.connect().execution_options(lp_write=True) as conn, conn.begin():
        if engine.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:id)"), {"id": _LOCK_ID})
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
    imported = cfg.attributes.get("imported_evidence")
    if imported is not None:  # its rows are in the catalog now: never import them twice
        imported.rename(imported.with_name(imported.name + ".imported"))
