"""Progressive rollouts: their state, their audit trail of decisions, and controller leases.

Tables are created only where missing, like the revisions before.

Revision ID: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    have = set(sa.inspect(op.get_bind()).get_table_names())
    if "rollouts" not in have:
        op.create_table(
            "rollouts",
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
    if "rollout_events" not in have:
        op.create_table(
            "rollout_events",
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("ts", sa.Float, nullable=False),
            sa.Column("rollout", sa.Text, nullable=False),
            sa.Column("step", sa.Integer, nullable=False),
            sa.Column("weight", sa.Float, nullable=False),
            sa.Column("decision", sa.Text, nullable=False),
            sa.Column("numbers", sa.Text, nullable=False),
            sa.Column("reason", sa.Text),
            sa.Column("holder", sa.Text),
        )
        op.create_index("rollout_events_rollout", "rollout_events", ["rollout", "ts"])
    if "leases" not in have:
        op.create_table(
            "leases",
            sa.Column("name", sa.Text, primary_key=True),
            sa.Column("holder", sa.Text, nullable=False),
            sa.Column("expires", sa.Float, nullable=False),
        )


def downgrade() -> None:
    op.drop_table("leases")
    op.drop_table("rollout_events")
    op.drop_table("rollouts")
