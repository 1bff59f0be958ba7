"""Human review sets: blind pairs of two versions' answers, reviewer assignments and ratings.

Tables are created only where missing, like the revisions before.

Revision ID: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"


def upgrade() -> None:
    have = set(sa.inspect(op.get_bind()).get_table_names())
    if "review_sets" not in have:
        op.create_table(
            "review_sets",
            sa.Column("name", sa.Text, primary_key=True),
            sa.Column("spec", sa.Text, nullable=False),
            sa.Column("version_a", sa.Text, nullable=False),
            sa.Column("version_b", sa.Text, nullable=False),
            sa.Column("created", sa.Float, nullable=False),
            sa.Column("summary", sa.Text),
            sa.Column("summarized", sa.Float),
        )
    if "review_items" not in have:
        op.create_table(
            "review_items",
            sa.Column("review", sa.Text, primary_key=True),
            sa.Column("item", sa.Integer, primary_key=True),
            sa.Column("messages", sa.Text, nullable=False),
            sa.Column("answer_a", sa.Text, nullable=False),
            sa.Column("answer_b", sa.Text, nullable=False),
            sa.Column("a_on_left", sa.Integer, nullable=False),
            sa.Column("stratum", sa.Text, nullable=False),
        )
    if "review_assignments" not in have:
        op.create_table(
            "review_assignments",
            sa.Column("review", sa.Text, primary_key=True),
            sa.Column("item", sa.Integer, primary_key=True),
            sa.Column("reviewer", sa.Text, primary_key=True),
            sa.Column("assigned", sa.Float, nullable=False),
            sa.Column("skipped", sa.Integer, nullable=False, server_default="0"),
        )
        op.create_index("review_assignments_reviewer", "review_assignments", ["review", "reviewer"])
    if "review_ratings" not in have:
        op.create_table(
            "review_ratings",
            sa.Column("review", sa.Text, primary_key=True),
            sa.Column("item", sa.Integer, primary_key=True),
            sa.Column("reviewer", sa.Text, primary_key=True),
            sa.Column("scores", sa.Text, nullable=False),
            sa.Column("preference", sa.Text),
            sa.Column("complete", sa.Integer, nullable=False, server_default="0"),
            sa.Column("updated", sa.Float, nullable=False),
        )


def downgrade() -> None:
    op.drop_table("review_ratings")
    op.drop_index("review_assignments_reviewer", "review_assignments")
    op.drop_table("review_assignments")
    op.drop_table("review_items")
    op.drop_table("review_sets")
