"""A/B evidence (one row per routed request) and feedback move into the catalog database.

The first release kept them in `<registry>/evidence.sqlite`; its rows are copied in and the
file is renamed to `evidence.sqlite.imported`, so nothing is counted twice.

Revision ID: 0002
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import sqlalchemy as sa
from alembic import context, op

revision = "0002"
down_revision = "0001"

REQUEST_COLUMNS = [
    "id",
    "ts",
    "route",
    "variant",
    "user_hash",
    "latency_s",
    "ttft_s",
    "prompt_tokens",
    "completion_tokens",
    "status",
    "shadow",
    "output",
]
FEEDBACK_COLUMNS = ["completion_id", "ts", "route", "variant", "score", "thumbs", "comment"]


def upgrade() -> None:
    bind = op.get_bind()
    have = set(sa.inspect(bind).get_table_names())
    if "requests" not in have:
        op.create_table(
            "requests",
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
        )
        op.create_index("requests_route", "requests", ["route", "variant"])
    if "feedback" not in have:
        op.create_table(
            "feedback",
            sa.Column("completion_id", sa.Text, nullable=False),
            sa.Column("ts", sa.Float, nullable=False),
            sa.Column("route", sa.Text, nullable=False),
            sa.Column("variant", sa.Text, nullable=False),
            sa.Column("score", sa.Float),
            sa.Column("thumbs", sa.Integer),
            sa.Column("comment", sa.Text),
        )
        op.create_index("feedback_route", "feedback", ["route", "variant"])
    root = context.config.attributes.get("registry_root")
    if root is not None:
        _import_evidence(Path(root) / "evidence.sqlite")


def _import_evidence(path: Path) -> None:
    if not path.is_file():
        return
    src = sqlite3.connect(path, timeout=30)
    try:
        have = {r[0] for r in src.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        for table, columns in (("requests", REQUEST_COLUMNS), ("feedback", FEEDBACK_COLUMNS)):
            if table not in have:
                continue
            target = sa.table(table, *[sa.column(c) for c in columns])
            cur = src.execute(f"SELECT {', '.join(columns)} FROM {table}")
            while rows := cur.fetchmany(1000):
                op.execute(target.insert().values([dict(zip(columns, r, strict=True)) for r in rows]))
    finally:
        src.close()
    # renamed by registry.migrations.upgrade once this transaction has committed
    context.config.attributes["imported_evidence"] = path


def downgrade() -> None:
    op.drop_table("feedback")
    op.drop_table("requests")
