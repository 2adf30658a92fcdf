"""Approvals: access requests, statement reviews and their votes.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26 00:00:00+00:00

New tables only: ``reviews`` (held statements and time-boxed access requests),
``review_votes`` and ``identity_owners`` (who answers for a service account, for
segregation of duties).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def _timestamp() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "reviews",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("requester", sa.String(255), nullable=False),
        sa.Column("connection", sa.String(255), nullable=False),
        sa.Column("session_id", sa.String(64), nullable=True),
        sa.Column("protocol", sa.String(50), nullable=True),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("rules", _JSON, nullable=False),
        sa.Column("terms", _JSON, nullable=False),
        sa.Column("access", sa.String(20), nullable=True),
        sa.Column("duration", sa.Integer(), nullable=True),
        sa.Column("created_at", _timestamp(), nullable=False),
        sa.Column("deadline", _timestamp(), nullable=False),
        sa.Column("decided_at", _timestamp(), nullable=True),
        sa.Column("decision", sa.Text(), nullable=True),
        sa.Column("grant_expires_at", _timestamp(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reviews")),
    )
    op.create_index(op.f("ix_reviews_status_created_at"), "reviews", ["status", "created_at"])
    op.create_index(
        op.f("ix_reviews_requester_kind_status"), "reviews", ["requester", "kind", "status"]
    )
    op.create_table(
        "review_votes",
        sa.Column("review_id", sa.String(32), nullable=False),
        sa.Column("voter", sa.String(255), nullable=False),
        sa.Column("controllers", _JSON, nullable=False),
        sa.Column("vote", sa.String(10), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("voted_at", _timestamp(), nullable=False),
        sa.Column("expires_at", _timestamp(), nullable=False),
        sa.PrimaryKeyConstraint("review_id", "voter", name=op.f("pk_review_votes")),
        sa.ForeignKeyConstraint(
            ["review_id"],
            ["reviews.id"],
            name=op.f("fk_review_votes_review_id_reviews"),
            ondelete="CASCADE",
        ),
    )
    op.create_table(
        "identity_owners",
        sa.Column("identity", sa.String(255), nullable=False),
        sa.Column("owner", sa.String(255), nullable=False),
        sa.Column("created_at", _timestamp(), nullable=False),
        sa.PrimaryKeyConstraint("identity", "owner", name=op.f("pk_identity_owners")),
        sa.ForeignKeyConstraint(
            ["identity"],
            ["users.name"],
            name=op.f("fk_identity_owners_identity_users"),
            ondelete="CASCADE",
        ),
    )
    op.create_index(op.f("ix_identity_owners_owner"), "identity_owners", ["owner"])


def downgrade() -> None:
    op.drop_index(op.f("ix_identity_owners_owner"), table_name="identity_owners")
    op.drop_table("identity_owners")
    op.drop_table("review_votes")
    op.drop_index(op.f("ix_reviews_requester_kind_status"), table_name="reviews")
    op.drop_index(op.f("ix_reviews_status_created_at"), table_name="reviews")
    op.drop_table("reviews")
