"""The store's schema as SQLAlchemy Core tables, for SQLite and PostgreSQL alike.

The migrations in ``migrations/versions`` create this schema; ``tests/gateway/test_store.py``
checks that a migrated database and this module agree, so change both together.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect

# Explicit constraint names, so later migrations can drop or alter them by name on both dialects.
NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)


class UTCDateTime(sa.TypeDecorator[dt.datetime]):
    """An aware UTC datetime on both dialects.

    PostgreSQL keeps the instant in ``timestamptz``. SQLite has no such type, so the value is
    stored as naive UTC text, whose fixed-width format also sorts chronologically.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: the store only accepts timezone-aware values")
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        assert isinstance(value, dt.datetime)
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)


# JSONB on PostgreSQL so operators can query options and groups; text on SQLite.
JSONType = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

agents = sa.Table(
    "agents",
    metadata,
    sa.Column("name", sa.String(255), primary_key=True),
    sa.Column("pool", sa.String(255), nullable=False),
    sa.Column("secret_hash", sa.LargeBinary(32), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("revoked_at", UTCDateTime(), nullable=True),
)

users = sa.Table(
    "users",
    metadata,
    sa.Column("name", sa.String(255), primary_key=True),
    sa.Column("is_admin", sa.Boolean(), nullable=False),
    sa.Column("groups", JSONType, nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    # person | service (API keys) | workload (exchanged CI tokens): a name never changes kind,
    # so no machine can sign in as a person, nor a person as a machine.
    sa.Column("kind", sa.String(20), nullable=False, server_default="person"),
    sa.Column("disabled_at", UTCDateTime(), nullable=True),
    # The IdP identity a person is bound to at first sign-in; NULL for local and bootstrap users.
    sa.Column("issuer", sa.String(512), nullable=True),
    sa.Column("subject", sa.String(255), nullable=True),
    sa.Column("password_hash", sa.Text(), nullable=True),  # scrypt, local users only
    sa.Column("totp_secret", sa.Text(), nullable=True),  # sealed (enc:v1:...), local users only
    # A service account whose API keys are DPoP-bound (RFC 9449; migration 0010).
    sa.Column("dpop", sa.Boolean(), nullable=False, server_default=sa.false()),
    sa.Index(None, "issuer", "subject", unique=True),
)

tokens = sa.Table(
    "tokens",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column(
        "user",
        sa.String(255),
        sa.ForeignKey("users.name", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("token_hash", sa.LargeBinary(32), nullable=False, unique=True),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("expires_at", UTCDateTime(), nullable=True),
    sa.Column("revoked_at", UTCDateTime(), nullable=True),
    sa.Column("label", sa.String(255), nullable=False),
    # bearer (bootstrap, `--token`) | access | refresh | connection | api_key
    sa.Column("kind", sa.String(20), nullable=False, server_default="bearer"),
    # The sign-in (``logins``) the token belongs to; revoking the login revokes the token.
    sa.Column("login_id", sa.String(32), nullable=True),
    sa.Column("connection", sa.String(255), nullable=True),  # per-connection credentials
    sa.Column("scopes", JSONType, nullable=True),  # API keys: connection patterns, "admin"
    # The credential a per-connection credential was minted from; revoked with it.
    sa.Column("parent_id", sa.String(32), nullable=True),
    # The RFC 7638 thumbprint of the key a DPoP-bound API key is bound to, from its first
    # use (migration 0010); NULL until then and for every other credential.
    sa.Column("jkt", sa.String(64), nullable=True),
    sa.Index(None, "user", "label"),
    sa.Index(None, "login_id"),
    sa.Index(None, "parent_id"),
)

# One row per sign-in (a gateway session, independent of the IdP token's lifetime): its
# absolute expiry, its idle timeout, and for OIDC the IdP refresh token, sealed, used to
# re-read the user's groups when the gateway credential is refreshed.
logins = sa.Table(
    "logins",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column(
        "user",
        sa.String(255),
        sa.ForeignKey("users.name", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("method", sa.String(32), nullable=False),
    sa.Column("issuer", sa.String(512), nullable=True),
    sa.Column("subject", sa.String(255), nullable=True),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("expires_at", UTCDateTime(), nullable=False),
    sa.Column("last_seen_at", UTCDateTime(), nullable=False),
    sa.Column("idle_timeout", sa.Integer(), nullable=True),  # seconds
    sa.Column("revoked_at", UTCDateTime(), nullable=True),
    sa.Column("idp_refresh_token", sa.Text(), nullable=True),  # sealed, never plaintext
    sa.Index(None, "user"),
)

connections = sa.Table(
    "connections",
    metadata,
    sa.Column("name", sa.String(255), primary_key=True),
    sa.Column("type", sa.String(50), nullable=False),
    sa.Column("pool", sa.String(255), nullable=False),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("port", sa.Integer(), nullable=False),
    sa.Column("options", JSONType, nullable=False),
    sa.Column("secrets", JSONType, nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
)

# Sessions are history: no foreign keys, so they outlive the users and connections they name.
sessions = sa.Table(
    "sessions",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("user", sa.String(255), nullable=False),
    sa.Column("connection", sa.String(255), nullable=False),
    sa.Column("protocol", sa.String(50), nullable=False),
    sa.Column("client_addr", sa.String(255), nullable=False),
    sa.Column("agent", sa.String(255), nullable=True),
    sa.Column("started_at", UTCDateTime(), nullable=False),
    sa.Column("ended_at", UTCDateTime(), nullable=True),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("error", sa.Text(), nullable=True),
    sa.Column("bytes_up", sa.BigInteger(), nullable=False),
    sa.Column("bytes_down", sa.BigInteger(), nullable=False),
    # The gateway member that serves the session (migration 0008): its sessions are closed
    # when it is reaped. None for sessions of stores from before members.
    sa.Column("member", sa.String(64), nullable=True),
    sa.Index(None, "started_at"),
    sa.Index(None, "user", "started_at"),
    sa.Index(None, "connection", "started_at"),
    sa.Index(None, "member"),
)

# ``data`` is kept as the canonical JSON text that was hashed, not as JSON/JSONB: JSONB would
# renormalise numbers and key order, and the chain must verify against exactly what was written.
audit_events = sa.Table(
    "audit_events",
    metadata,
    sa.Column("seq", sa.BigInteger(), primary_key=True, autoincrement=False),
    sa.Column("ts", UTCDateTime(), nullable=False),
    sa.Column("kind", sa.String(100), nullable=False),
    sa.Column("actor", sa.Text(), nullable=False),
    sa.Column("session_id", sa.String(64), nullable=True),
    sa.Column("data", sa.Text(), nullable=False),
    sa.Column("prev_hash", sa.LargeBinary(32), nullable=False),
    sa.Column("hash", sa.LargeBinary(32), nullable=False),
    sa.Index(None, "kind"),
    sa.Index(None, "session_id"),
)

# One row: the seq and hash of the last event. Appenders lock it to serialise the chain, and the
# verifier compares it with the log to notice events removed from the end.
audit_head = sa.Table(
    "audit_head",
    metadata,
    sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
    sa.Column("seq", sa.BigInteger(), nullable=False),
    sa.Column("hash", sa.LargeBinary(32), nullable=False),
    sa.CheckConstraint("id = 1", name="single_row"),
)

# ---- approvals (migration 0003): reviews, their votes, and who owns a machine identity ----

# One row per review: a held statement (kind "statement") or a time-boxed access request
# (kind "access"). History, like sessions: no foreign keys to users or connections.
reviews = sa.Table(
    "reviews",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("kind", sa.String(20), nullable=False),  # statement | access
    sa.Column("status", sa.String(20), nullable=False),  # pending|approved|denied|expired|cancelled
    sa.Column("requester", sa.String(255), nullable=False),
    sa.Column("connection", sa.String(255), nullable=False),
    sa.Column("session_id", sa.String(64), nullable=True),
    sa.Column("protocol", sa.String(50), nullable=True),
    sa.Column("text", sa.Text(), nullable=False),  # the statement; "" for access requests
    sa.Column("reason", sa.Text(), nullable=False),  # why it needs review / the requester's why
    sa.Column("rules", JSONType, nullable=False),
    sa.Column("terms", JSONType, nullable=False),  # gateway.policy.approval.ReviewTerms
    sa.Column("access", sa.String(20), nullable=True),  # access requests: the level granted
    sa.Column("duration", sa.Integer(), nullable=True),  # access requests: seconds granted
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("deadline", UTCDateTime(), nullable=False),  # undecided by then: expired
    sa.Column("decided_at", UTCDateTime(), nullable=True),
    sa.Column("decision", sa.Text(), nullable=True),  # why it was decided so
    sa.Column("grant_expires_at", UTCDateTime(), nullable=True),  # approved access requests
    sa.Index(None, "status", "created_at"),
    sa.Index(None, "requester", "kind", "status"),
)

review_votes = sa.Table(
    "review_votes",
    metadata,
    sa.Column(
        "review_id",
        sa.String(32),
        sa.ForeignKey("reviews.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("voter", sa.String(255), primary_key=True),
    sa.Column("controllers", JSONType, nullable=False),  # the voter and their owners, then
    sa.Column("vote", sa.String(10), nullable=False),  # approve | deny
    sa.Column("reason", sa.Text(), nullable=False),
    sa.Column("voted_at", UTCDateTime(), nullable=False),
    sa.Column("expires_at", UTCDateTime(), nullable=False),
)

# The people who answer for a machine identity (service account): for segregation of duties
# they and it are one party. No foreign key on `owner`: a person may not have signed in yet.
identity_owners = sa.Table(
    "identity_owners",
    metadata,
    sa.Column(
        "identity",
        sa.String(255),
        sa.ForeignKey("users.name", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("owner", sa.String(255), primary_key=True),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Index(None, "owner"),
)


# ---- policy in the store (migration 0004) ----------------------------------------------------

# Every policy document ever applied, numbered from 1; the newest is in force. ``document`` is the
# canonical JSON text whose sha256 is ``sha256``, so "unchanged" is a comparison of digests.
policy_versions = sa.Table(
    "policy_versions",
    metadata,
    sa.Column("version", sa.Integer(), primary_key=True, autoincrement=False),
    sa.Column("document", sa.Text(), nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("applied_by", sa.String(255), nullable=False),
    sa.Column("applied_at", UTCDateTime(), nullable=False),
    sa.Column("comment", sa.Text(), nullable=True),
)

# Exfiltration budget usage per UTC day; gateways add to it with atomic increments.
budget_usage = sa.Table(
    "budget_usage",
    metadata,
    sa.Column("day", sa.Date(), primary_key=True),
    sa.Column("user", sa.String(255), primary_key=True),
    sa.Column("connection", sa.String(255), primary_key=True),
    sa.Column("budget", sa.String(100), primary_key=True),
    sa.Column("rows", sa.BigInteger(), nullable=False),
    sa.Column("bytes", sa.BigInteger(), nullable=False),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
)


# ---- SSH (migration 0005) ------------------------------------------------------------
# Public keys users registered for SSH to the gateway (`wardgate ssh-keys add`). A key
# authenticates exactly one user, so its fingerprint is unique across users.
ssh_keys = sa.Table(
    "ssh_keys",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column(
        "user",
        sa.String(255),
        sa.ForeignKey("users.name", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("fingerprint", sa.String(128), nullable=False, unique=True),
    sa.Column("public_key", sa.Text(), nullable=False),  # "TYPE BASE64", no comment
    sa.Column("comment", sa.String(255), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Index(None, "user"),
)


# ---- workload token replay (migration 0006) ------------------------------------------
# Workload tokens already exchanged under a `single_use` trust entry, by the SHA-256 of
# issuer and `jti` (never the token), until the token expires; rows past `expires_at` are
# deleted by the next exchange. The primary key makes the check-and-remember atomic across
# gateway replicas: the second INSERT of a digest does nothing.
token_replay = sa.Table(
    "token_replay",
    metadata,
    sa.Column("digest", sa.LargeBinary(32), primary_key=True),
    sa.Column("trust", sa.String(255), nullable=False),  # the trust entry that took it
    sa.Column("used_at", UTCDateTime(), nullable=False),
    sa.Column("expires_at", UTCDateTime(), nullable=False),
    sa.Index(None, "expires_at"),
)


# ---- rate limits (migration 0007) ----------------------------------------------------
# Sign-in attempts per key and fixed window (gateway.ratelimit); every member adds to the
# same rows. `key` is a digest (a claimed identity is untrusted input of any length);
# `label` is its readable form for the audit log. Rows are pruned once `expires_at` (two
# windows after the start: the sliding estimate reads the previous window) has passed.
rate_limits = sa.Table(
    "rate_limits",
    metadata,
    sa.Column("kind", sa.String(20), primary_key=True),
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("window_start", UTCDateTime(), primary_key=True),
    sa.Column("label", sa.String(255), nullable=False),
    sa.Column("attempts", sa.Integer(), nullable=False),
    sa.Column("refused", sa.Integer(), nullable=False),
    sa.Column("expires_at", UTCDateTime(), nullable=False),
    sa.Index(None, "expires_at"),
)


# ---- the fleet (migration 0008; gateway/store/members.py) ------------------------------
# One row per gateway process that ever started on this store. A live member moves
# `heartbeat_at` forward every few seconds; one whose heartbeat is older than the bound is
# marked `gone_at` by a live member, which closes its sessions in the same transaction.
members = sa.Table(
    "members",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("agent_address", sa.String(255), nullable=False),  # where agents reach it
    sa.Column("public_address", sa.String(255), nullable=False),  # clients' HOST:PORT
    sa.Column("version", sa.String(64), nullable=False),
    sa.Column("started_at", UTCDateTime(), nullable=False),
    sa.Column("heartbeat_at", UTCDateTime(), nullable=False),
    sa.Column("gone_at", UTCDateTime(), nullable=True),
    sa.Column("gone_reason", sa.String(255), nullable=True),  # "stopped" or "heartbeat lost"
    sa.Index(None, "heartbeat_at"),
)

# The fleet's identity (TLS CA, SSH host key, SSH user CA) when no file configures it:
# created by the first member (insert-if-absent), loaded by every other one. `sealed` is a
# SecretBox blob (gateway/crypto.py) bound to the item's name.
fleet_identity = sa.Table(
    "fleet_identity",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("sealed", sa.Text(), nullable=False),
    sa.Column("created_by", sa.String(64), nullable=False),  # the member that created it
    sa.Column("created_at", UTCDateTime(), nullable=False),
)


# Console sign-ins (migration 0009): the browser's cookie holds a random id, this table only
# its SHA-256, so any member of a fleet accepts it and a leaked table opens nothing.
console_sessions = sa.Table(
    "console_sessions",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),  # public, safe to log
    sa.Column("id_hash", sa.LargeBinary(32), nullable=False, unique=True),
    sa.Column(
        "user",
        sa.String(255),
        sa.ForeignKey("users.name", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("login_id", sa.String(32), nullable=False),  # the sign-in it rides on
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("last_seen_at", UTCDateTime(), nullable=False),
    sa.Column("idle_timeout", sa.Integer(), nullable=False),  # seconds
    sa.Column("revoked_at", UTCDateTime(), nullable=True),
    sa.Index(None, "last_seen_at"),
)
