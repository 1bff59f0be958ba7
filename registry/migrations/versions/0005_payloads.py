"""Opt-in payload logging: logged completions (prompt, answer, timing) and their feedback.

Tables are created only where missing, like the revisions before.

Revision ID: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"


def upgrade() -> None:
    have = set(sa.inspect(op.get_bind()).get_table_names())
    if "payloads" not in have:
        op.create_table(
            "payloads",
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
        )
        op.create_index("payloads_name", "payloads", ["name", "ts"])
        op.create_index("payloads_version", "payloads", ["version", "ts"])
    if "payload_feedback" not in have:
        op.create_table(
            "payload_feedback",
            sa.Column("completion_id", sa.Text, nullable=False),
            sa.Column("ts", sa.Float, nullable=False),
            sa.Column("score", sa.Float),
            sa.Column("thumbs", sa.Integer),
            sa.Column("comment", sa.Text),
        )
        op.create_index("payload_feedback_id", "payload_feedback", ["completion_id"])


def downgrade() -> None:
    op.drop_table("payload_feedback")
    op.drop_table("payloads")
