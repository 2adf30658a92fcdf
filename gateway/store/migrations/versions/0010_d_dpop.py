"""DPoP (RFC 9449): a service account may require sender-constrained credentials
(``users.dpop``); an API key of one is bound to the thumbprint of its client's key
(``tokens.jkt``) at its first use. Proof ``jti``s reuse the ``token_replay`` table.

Revision ID: 0010_d_dpop
Revises: 0009_w_console
Create Date: 2026-12-08 00:00:00+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010_d_dpop"
down_revision: str | Sequence[str] | None = "0009_w_console"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "users", sa.Column("dpop", sa.Boolean(), nullable=False, server_default=sa.false())
    )
    op.add_column("tokens", sa.Column("jkt", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tokens") as batch:
        batch.drop_column("jkt")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("dpop")
