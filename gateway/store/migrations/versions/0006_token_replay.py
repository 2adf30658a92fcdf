"""Workload token replay: the single-use workload tokens already exchanged, until they expire.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07 00:00:00+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "token_replay",
        sa.Column("digest", sa.LargeBinary(32), nullable=False),
        sa.Column("trust", sa.String(255), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("digest", name=op.f("pk_token_replay")),
    )
    op.create_index(op.f("ix_token_replay_expires_at"), "token_replay", ["expires_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_token_replay_expires_at"), table_name="token_replay")
    op.drop_table("token_replay")
