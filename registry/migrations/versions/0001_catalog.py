"""The first release's catalog: versions, aliases, tags, routes, names, the change counter.

Tables are created only where missing, so a catalog.sqlite made by the first release (which
had no alembic_version table) is adopted as it is.

Revision ID: 0001
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None


def upgrade() -> None:
    bind = op.get_bind()
    have = set(sa.inspect(bind).get_table_names())
    tables: dict[str, list[sa.Column[Any]]] = {
        "versions": [
            sa.Column("name", sa.Text, primary_key=True),
            sa.Column("version", sa.Integer, primary_key=True),
            sa.Column("created", sa.Float, nullable=False),
            sa.Column("base_model", sa.Text, nullable=False),
            sa.Column("base_sha256", sa.Text, nullable=False),
            sa.Column("manifest_sha256", sa.Text, nullable=False),
            sa.Column("parent", sa.Integer),
            sa.Column("lineage", sa.Text, nullable=False),
        ],
        "aliases": [
            sa.Column("name", sa.Text, primary_key=True),
            sa.Column("alias", sa.Text, primary_key=True),
            sa.Column("version", sa.Integer, nullable=False),
            sa.Column("updated", sa.Float, nullable=False),
        ],
        "tags": [
            sa.Column("name", sa.Text, primary_key=True),
            sa.Column("version", sa.Integer, primary_key=True),
            sa.Column("tag", sa.Text, primary_key=True),
        ],
        "routes": [
            sa.Column("name", sa.Text, primary_key=True),
            sa.Column("spec", sa.Text, nullable=False),
            sa.Column("updated", sa.Float, nullable=False),
        ],
        "names": [
            sa.Column("name", sa.Text, primary_key=True),
            sa.Column("last_version", sa.Integer, nullable=False),
        ],
        "meta": [
            sa.Column("key", sa.Text, primary_key=True),
            sa.Column("value", sa.BigInteger, nullable=False),
        ],
    }
    for name, columns in tables.items():
        if name not in have:
            op.create_table(name, *columns)
    meta = sa.table("meta", sa.column("key", sa.Text), sa.column("value", sa.BigInteger))
    if bind.execute(sa.select(meta.c.key).where(meta.c.key == "changes")).first() is None:
        op.execute(meta.insert().values(key="changes", value=0))


def downgrade() -> None:
    raise NotImplementedError("the first schema has nothing to go back to")
