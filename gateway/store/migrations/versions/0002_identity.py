"""Identity: user kinds and IdP bindings, sign-ins (logins), typed and scoped tokens.

Revision ID: 0002
Revises: 0001
Create Date: 2025-02-01 00:00:00+00:00

Only ``ADD COLUMN`` and ``CREATE [UNIQUE] INDEX`` on existing tables: SQLite does both in
place, so no table is rebuilt (rebuilding ``users`` with foreign keys on would cascade-delete
its tokens). ``tokens.login_id`` is therefore an indexed column rather than a foreign key;
logins are revoked, never deleted.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def _timestamp() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.add_column(
        "users", sa.Column("kind", sa.String(20), nullable=False, server_default="person")
    )
    op.add_column("users", sa.Column("disabled_at", _timestamp(), nullable=True))
    op.add_column("users", sa.Column("issuer", sa.String(512), nullable=True))
    op.add_column("users", sa.Column("subject", sa.String(255), nullable=True))
    op.add_column("users", sa.Column("password_hash", sa.Text(), nullable=True))
    op.add_column("users", sa.Column("totp_secret", sa.Text(), nullable=True))
    op.create_index(op.f("ix_users_issuer_subject"), "users", ["issuer", "subject"], unique=True)

    op.add_column(
        "tokens", sa.Column("kind", sa.String(20), nullable=False, server_default="bearer")
    )
    op.add_column("tokens", sa.Column("login_id", sa.String(32), nullable=True))
    op.add_column("tokens", sa.Column("connection", sa.String(255), nullable=True))
    op.add_column("tokens", sa.Column("scopes", _JSON, nullable=True))
    op.add_column("tokens", sa.Column("parent_id", sa.String(32), nullable=True))
    op.create_index(op.f("ix_tokens_login_id"), "tokens", ["login_id"])
    op.create_index(op.f("ix_tokens_parent_id"), "tokens", ["parent_id"])

    op.create_table(
        "logins",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("user", sa.String(255), nullable=False),
        sa.Column("method", sa.String(32), nullable=False),
        sa.Column("issuer", sa.String(512), nullable=True),
        sa.Column("subject", sa.String(255), nullable=True),
        sa.Column("created_at", _timestamp(), nullable=False),
        sa.Column("expires_at", _timestamp(), nullable=False),
        sa.Column("last_seen_at", _timestamp(), nullable=False),
        sa.Column("idle_timeout", sa.Integer(), nullable=True),
        sa.Column("revoked_at", _timestamp(), nullable=True),
        sa.Column("idp_refresh_token", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_logins")),
        sa.ForeignKeyConstraint(
            ["user"], ["users.name"], name=op.f("fk_logins_user_users"), ondelete="CASCADE"
        ),
    )
    op.create_index(op.f("ix_logins_user"), "logins", ["user"])


def downgrade() -> None:
    op.drop_index(op.f("ix_logins_user"), table_name="logins")
    op.drop_table("logins")
    op.drop_index(op.f("ix_tokens_parent_id"), table_name="tokens")
    op.drop_index(op.f("ix_tokens_login_id"), table_name="tokens")
    for column in ("parent_id", "scopes", "connection", "login_id", "kind"):
        op.drop_column("tokens", column)  # SQLite >= 3.35 drops columns in place
    op.drop_index(op.f("ix_users_issuer_subject"), table_name="users")
    for column in ("totp_secret", "password_hash", "subject", "issuer", "disabled_at", "kind"):
        op.drop_column("users", column)
