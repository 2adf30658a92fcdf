"""The gateway's persistent state: who may connect, to what, and what happened.

Layout:

* ``models``: the frozen records the rest of the gateway sees; no SQLAlchemy leaks out.
* ``tables``: the schema as SQLAlchemy Core tables, one definition for SQLite and PostgreSQL.
* ``migrations``: Alembic revisions, applied by ``Store.open`` on every start, so a gateway always
  runs against the schema it was built for (concurrent starts on PostgreSQL take an advisory lock).
* ``store``: ``Store``, the facade: opens and migrates the database and holds one repository
  per aggregate as an attribute (``store.agents.get(name)``): ``agents``, ``identity`` (users,
  tokens, sign-ins, local credentials, token replay), ``connections``, ``sessions``,
  ``reviews`` (with owners and grants), ``audit`` (``auditlog``), ``policy`` (versions,
  budget usage), ``ssh_keys`` (``sshkeys``), ``members`` and ``rate_limits`` (``ratelimits``).
  Each repository's methods are synchronous Core queries, one short transaction per call on a
  pooled connection.
* ``db``: the core they share: the engine, transactions (``read``, ``write``,
  ``transaction``), errors and dialect helpers.
* ``writer``: the store's async face, ``store.io``, which the event loop uses for every call:
  ``write`` on the store's one writer thread (FIFO; the audit log's group commits too),
  ``read`` inline on SQLite (WAL readers never wait for the write lock) and in a thread on
  PostgreSQL, ``scan`` (unbounded reads) in a thread. Nothing on the loop waits for a lock.
* ``chain``: the audit log's hash chain as pure functions, shared with offline verifiers.
* ``audit_writer``: the one implementation that extends the chain, on raw DB-API connections:
  inside a store transaction (``store.audit.append``) or in batches (``AuditWriter``).

SQLite (the default, ``sqlite:///path/wardgate.db``) runs in WAL mode with foreign keys on; its
writers take the write lock up front (``BEGIN IMMEDIATE``). PostgreSQL
(``postgresql+psycopg://...``) lets several gateway processes share one store.

Identity (migration 0002): users have a kind (person, service, workload) that never changes,
people are bound to one IdP (issuer, subject); ``logins`` are sign-ins (gateway sessions with an
absolute expiry and an idle timeout) and tokens carry their kind, sign-in, connection and scopes.

What is stored, and what never is: agent secrets and bearer tokens only as sha256 digests;
connection secrets only as references (``env:``, ``file:``) or sealed blobs (``enc:``). Datetimes
are timezone-aware UTC in and out.

The audit log is append-only and gateway-wide: event ``n`` carries ``seq = n`` (gapless, from 1)
and ``hash = sha256(hash(n-1) + canonical JSON of the event)``. Appends are serialised on the
``audit_head`` row, so the chain stays linear with any number of writers; ``store.audit.verify``
reports the first event that was edited, removed or reordered.
"""

from gateway.store.db import (
    AlreadyExists,
    Conflict,
    NotFound,
    StoreError,
    StoreUnavailable,
    new_id,
)
from gateway.store.models import (
    AgentRecord,
    AuditEvent,
    ConnectionRecord,
    LoginRecord,
    ReviewRecord,
    SessionRecord,
    SshKeyRecord,
    TokenRecord,
    UserRecord,
    VoteRecord,
)
from gateway.store.sessions import EventMatch
from gateway.store.store import Store

__all__ = [
    "AgentRecord",
    "AlreadyExists",
    "AuditEvent",
    "Conflict",
    "ConnectionRecord",
    "EventMatch",
    "LoginRecord",
    "NotFound",
    "ReviewRecord",
    "SessionRecord",
    "SshKeyRecord",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "TokenRecord",
    "UserRecord",
    "VoteRecord",
    "new_id",
]
