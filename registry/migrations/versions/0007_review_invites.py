"""Review invites: one bearer token per reviewer (only its sha256 is stored), revocable.

Revision ID: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"


def upgrade() -> None:
    if "review_invites" not in set(sa.inspect(op.get_bind()).get_table_names()):
        op.create_table(
            "review_invites",
            sa.Column("token_sha256", sa.Text, primary_key=True),
            sa.Column("reviewer", sa.Text, nullable=False),
            sa.Column("created", sa.Float, nullable=False),
            sa.Column("revoked", sa.Float),
        )
        op.create_index("review_invites_reviewer", "review_invites", ["reviewer"])


def downgrade() -> None:
    op.drop_table("review_invites")
