"""Evaluations of a version made after its push (e.g. `platform eval --lm-eval`): one row each.

Revision ID: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"


def upgrade() -> None:
    if "evaluations" not in set(sa.inspect(op.get_bind()).get_table_names()):
        op.create_table(
            "evaluations",
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("name", sa.Text, nullable=False),
            sa.Column("version", sa.Integer, nullable=False),
            sa.Column("kind", sa.Text, nullable=False),
            sa.Column("created", sa.Float, nullable=False),
            sa.Column("record", sa.Text, nullable=False),
        )
        op.create_index("evaluations_version", "evaluations", ["name", "version"])


def downgrade() -> None:
    op.drop_table("evaluations")
