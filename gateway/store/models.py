"""Records the store hands out: frozen, typed, free of SQLAlchemy."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class AgentRecord:
    name: str
    pool: str
    secret_hash: bytes  # sha256 of the agent secret; the secret itself is never stored
    created_at: dt.datetime
    revoked_at: dt.datetime | None = None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


USER_KINDS = ("person", "service", "workload")
"""A person signs in through the IdP (or locally); service accounts hold API keys; workload
identities exchange a trusted CI token. Machines are the last two."""


@dataclass(frozen=True, slots=True)
class UserRecord:
    name: str
    is_admin: bool
    created_at: dt.datetime
    groups: tuple[str, ...] = ()
    kind: str = "person"
    disabled_at: dt.datetime | None = None
    issuer: str | None = None  # the IdP a person is bound to, with `subject`
    subject: str | None = None
    has_password: bool = False  # a local user (password + TOTP), for setups without an IdP
    dpop: bool = False  # a service account whose API keys need DPoP proofs (RFC 9449)

    @property
    def disabled(self) -> bool:
        return self.disabled_at is not None

    @property
    def is_machine(self) -> bool:
        return self.kind != "person"


@dataclass(frozen=True, slots=True)
class TokenRecord:
    id: str  # public identifier, safe to log
    user: str
    token_hash: bytes  # sha256 of the bearer token
    created_at: dt.datetime
    expires_at: dt.datetime | None = None
    revoked_at: dt.datetime | None = None
    label: str = ""
    kind: str = "bearer"  # bearer | access | refresh | connection | api_key
    login_id: str | None = None  # the sign-in it belongs to
    connection: str | None = None  # a per-connection credential is valid for this one only
    scopes: tuple[str, ...] | None = None  # API keys: connection patterns, and "admin"
    parent_id: str | None = None  # the credential this one was minted from
    jkt: str | None = None  # DPoP: the thumbprint of the key it is bound to

    def valid_at(self, now: dt.datetime) -> bool:
        if self.revoked_at is not None:
            return False
        return self.expires_at is None or now < self.expires_at


@dataclass(frozen=True, slots=True)
class LoginRecord:
    """One sign-in: the gateway session its tokens belong to."""

    id: str  # public identifier, safe to log
    user: str
    method: str  # oidc | device | local | workload | token
    created_at: dt.datetime
    expires_at: dt.datetime  # absolute: refreshing never extends a login past this
    last_seen_at: dt.datetime
    idle_timeout: int | None = None  # seconds without any use of its tokens
    revoked_at: dt.datetime | None = None
    issuer: str | None = None
    subject: str | None = None
    idp_refresh_token: str | None = None  # sealed (enc:v1:...) or None

    def valid_at(self, now: dt.datetime) -> bool:
        if self.revoked_at is not None or now >= self.expires_at:
            return False
        if self.idle_timeout is None:
            return True
        return now < self.last_seen_at + dt.timedelta(seconds=self.idle_timeout)

    def why_invalid(self, now: dt.datetime) -> str:
        if self.revoked_at is not None:
            return "sign-in revoked"
        if now >= self.expires_at:
            return "sign-in expired"
        return "sign-in idle for too long"


@dataclass(frozen=True, slots=True)
class ConnectionRecord:
    name: str
    type: str  # "tcp", later "postgres", "ssh", "kubernetes", "mysql"
    pool: str  # the agent pool that reaches the target
    host: str
    port: int
    options: dict[str, str] = field(default_factory=dict)  # database, username, sslmode, ...
    # secret name -> "env:NAME" | "file:PATH" | "enc:<base64 AES-GCM blob>"; never plaintext
    secrets: dict[str, str] = field(default_factory=dict)
    created_at: dt.datetime | None = None
    updated_at: dt.datetime | None = None


@dataclass(frozen=True, slots=True)
class SessionRecord:
    id: str
    user: str
    connection: str
    protocol: str
    client_addr: str
    started_at: dt.datetime
    agent: str | None = None
    ended_at: dt.datetime | None = None
    status: str = "open"  # open | closed | failed
    error: str | None = None
    bytes_up: int = 0  # client -> target
    bytes_down: int = 0  # target -> client
    member: str | None = None  # the gateway member serving it (store/members.py)


@dataclass(frozen=True, slots=True)
class AuditEvent:
    seq: int  # position in the gateway-wide log, 1-based, gapless
    ts: dt.datetime
    kind: str  # e.g. "agent.rejected", "session.open", "connection.upsert"
    actor: str  # user or agent name, "-" when unknown
    session_id: str | None
    data: dict[str, Any]
    prev_hash: bytes
    hash: bytes


# ---- approvals (gateway/reviews) -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VoteRecord:
    voter: str
    controllers: tuple[str, ...]  # the voter and their owners when they voted
    vote: str  # approve | deny
    reason: str
    voted_at: dt.datetime
    expires_at: dt.datetime


@dataclass(frozen=True, slots=True)
class ReviewRecord:
    id: str
    kind: str  # statement | access
    status: str  # pending | approved | denied | expired | cancelled
    requester: str
    connection: str
    text: str
    reason: str
    terms: dict[str, Any]
    created_at: dt.datetime
    deadline: dt.datetime
    rules: tuple[str, ...] = ()
    session_id: str | None = None
    protocol: str | None = None
    access: str | None = None
    duration: int | None = None
    decided_at: dt.datetime | None = None
    decision: str | None = None
    grant_expires_at: dt.datetime | None = None
    votes: tuple[VoteRecord, ...] = ()


# ---- policy in the store (migration 0004) ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class PolicyVersionRecord:
    version: int  # from 1; the newest is in force
    document: str  # canonical JSON of the policy document
    sha256: str  # hex digest of `document`
    applied_by: str
    applied_at: dt.datetime
    comment: str | None = None


# ---- SSH -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SshKeyRecord:
    """A public key a user registered for SSH to the gateway."""

    id: str
    user: str
    fingerprint: str  # OpenSSH "SHA256:..."
    public_key: str  # "TYPE BASE64"
    comment: str
    created_at: dt.datetime
