"""Feedback is tied to who asked: requests and logged payloads keep the HMAC of the API key that
made them (`key_hash`), and feedback is found by completion id (one feedback per completion).

Revision ID: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    for table in ("requests", "payloads"):
        if "key_hash" not in {c["name"] for c in inspector.get_columns(table)}:
            op.add_column(table, sa.Column("key_hash", sa.Text))
    if "feedback_completion" not in {i["name"] for i in inspector.get_indexes("feedback")}:
        op.create_index("feedback_completion", "feedback", ["completion_id"])


def downgrade() -> None:
    op.drop_index("feedback_completion", "feedback")
    op.drop_column("payloads", "key_hash")
    op.drop_column("requests", "key_hash")
