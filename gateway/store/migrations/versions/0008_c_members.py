"""The fleet: gateway members with heartbeats, the fleet's sealed identity, and the member
that serves each session.

Revision ID: 0008_c_members
Revises: 0007
Create Date: 2026-12-07 00:00:00+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008_c_members"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _timestamp() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "members",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("agent_address", sa.String(255), nullable=False),
        sa.Column("public_address", sa.String(255), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("started_at", _timestamp(), nullable=False),
        sa.Column("heartbeat_at", _timestamp(), nullable=False),
        sa.Column("gone_at", _timestamp(), nullable=True),
        sa.Column("gone_reason", sa.String(255), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_members")),
    )
    op.create_index(op.f("ix_members_heartbeat_at"), "members", ["heartbeat_at"])
    op.create_table(
        "fleet_identity",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("sealed", sa.Text(), nullable=False),
        sa.Column("created_by", sa.String(64), nullable=False),
        sa.Column("created_at", _timestamp(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_fleet_identity")),
    )
    op.add_column("sessions", sa.Column("member", sa.String(64), nullable=True))
    op.create_index(op.f("ix_sessions_member"), "sessions", ["member"])


def downgrade() -> None:
    op.drop_index(op.f("ix_sessions_member"), table_name="sessions")
    with op.batch_alter_table("sessions") as batch:
        batch.drop_column("member")
    op.drop_table("fleet_identity")
    op.drop_index(op.f("ix_members_heartbeat_at"), table_name="members")
    op.drop_table("members")
