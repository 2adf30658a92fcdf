"""``Store``: the gateway's persistent state over SQLAlchemy Core, on SQLite or PostgreSQL.

Every method is synchronous and runs in its own short transaction on a connection from the
engine's pool, so they can run from threads concurrently. The event loop calls them through
``store.io`` (``gateway/store/writer.py``): writes on the store's one writer thread, short
reads inline on SQLite and in a thread on PostgreSQL.

Transactions come in two kinds:

* reads (``_read``) take a plain transaction; on SQLite in WAL mode they never wait for writers;
* writes (``_write``) on SQLite start with ``BEGIN IMMEDIATE``, taking the database's single write
  lock up front. A deferred transaction that reads and then writes can fail with "database is
  locked" when another writer got in between, whatever the busy timeout; an immediate one simply
  waits its turn. pysqlite would issue its own ``BEGIN`` lazily, so the engine switches that off and
  issues ``BEGIN`` itself from the ``begin`` event (SQLAlchemy's documented recipe).

Audit appends additionally lock the one-row ``audit_head`` table (``SELECT ... FOR UPDATE`` on
PostgreSQL; the SQLite write lock already covers it), so appenders in any number of threads or
gateway processes extend the chain one at a time and seqs stay gapless. The chain has one
implementation, ``audit_writer``: ``append_audit`` runs it inside the call's transaction.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
import secrets
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import alembic.command
import alembic.config
import alembic.script
import alembic.util
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import postgresql, sqlite

from gateway.ratelimit import Charge, Key, Refusal
from gateway.store import chain, members, ratelimits
from gateway.store import tables as t
from gateway.store.audit_writer import AuditWriter, extend_chain
from gateway.store.models import (
    AgentRecord,
    AuditEvent,
    ConnectionRecord,
    LoginRecord,
    PolicyVersionRecord,
    ReviewRecord,
    SessionRecord,
    SshKeyRecord,
    TokenRecord,
    UserRecord,
    VoteRecord,
)
from gateway.store.writer import AsyncFace, Writer

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

SQLITE_BUSY_TIMEOUT_MS = 30_000
"""How long a SQLite writer waits for the write lock before giving up with "database is locked"."""

SECRET_REFERENCE_PREFIXES = ("env:", "file:", "enc:")
"""What a connection secret may look like in the store: a reference or a sealed blob."""

ENDED_SESSION_STATUSES = frozenset({"closed", "failed"})

TOKEN_KINDS = frozenset({"bearer", "access", "refresh", "connection", "api_key"})

# pg_advisory_xact_lock key serialising migrations across gateway processes ("Ward").
_MIGRATION_LOCK_KEY = 0x57617264
_POLICY_LOCK_KEY = 0x57617265  # serialises policy version numbering across gateways
_SQLITE_BEGIN_OPTION = "wardgate_sqlite_begin"
_HASH_SIZE = 32
_TOKEN_ID_BYTES = 9  # 72 random bits, 12 url-safe characters


def new_id(nbytes: int = _TOKEN_ID_BYTES) -> str:
    """A random url-safe identifier that never starts with "-": users pass ids to the CLI,
    whose parser would take such an id for an option (one id in 64 did)."""
    while True:
        candidate = secrets.token_urlsafe(nbytes)
        if not candidate.startswith("-"):
            return candidate


class StoreError(Exception):
    """The store cannot do what was asked."""


class AlreadyExists(StoreError):
    """A record with that key exists already."""


class NotFound(StoreError):
    """No record with that key."""


class Conflict(StoreError):
    """The change would make one identity pass for another (a name bound elsewhere)."""


class StoreUnavailable(StoreError):
    """The database failed a read or write it would do on a good day (a full disk, a lost
    server, a lock held too long); the message is the database's first line, no SQL."""


def _unavailable(exc: sa.exc.DBAPIError) -> StoreUnavailable:
    reason = str(exc.orig or exc).strip().splitlines() or ["unknown error"]
    return StoreUnavailable(f"store unavailable: {reason[0]}")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def alembic_config(connection: sa.Connection | None = None) -> alembic.config.Config:
    """An Alembic configuration for the store's migrations, without an alembic.ini.

    With ``connection``, migrations run on it, inside whatever transaction it holds.
    """
    config = alembic.config.Config()
    # ConfigParser interpolation would read a '%' in the path as the start of a reference.
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


class _Transaction(threading.local):
    conn: sa.Connection | None = None


class Store:
    """The gateway's agents, users, tokens, connections, sessions and audit log.

    Create it with ``Store.open(url)``; it is safe to share between threads. Records it returns
    carry timezone-aware UTC datetimes, and it refuses naive ones.
    """

    def __init__(
        self,
        engine: sa.Engine,
        *,
        clock: Callable[[], dt.datetime] = utcnow,
        serialize: bool = False,
        sqlite_sync: Literal["full", "normal"] = "full",
        read_only: bool = False,
    ) -> None:
        """Wrap ``engine`` without migrating it; ``open`` is the usual way in.

        ``serialize`` makes calls take turns, for engines whose threads share one connection.
        """
        self._engine = engine
        self._clock = clock
        # An in-memory SQLite database is one connection shared by every thread; it must not
        # carry two transactions at once.
        self._serial: contextlib.AbstractContextManager[Any] = (
            threading.RLock() if serialize else contextlib.nullcontext()
        )
        self._closed = False
        self._tx = _Transaction()  # the connection of this thread's `transaction`, if any
        # Writes made with fsync=False skip their own fsync when this is "full" (see _write).
        self._relaxable = engine.dialect.name == "sqlite" and sqlite_sync == "full"
        self._dialect: Literal["sqlite", "postgresql"]
        self._write_engine: sa.Engine
        self._snapshot_engine: sa.Engine
        if engine.dialect.name == "sqlite":
            if engine.dialect.driver != "pysqlite":
                raise ValueError("SQLite is supported through the standard sqlite3 driver only")
            self._dialect = "sqlite"
            event.listen(
                engine,
                "connect",
                _sqlite_on_connect_read_only
                if read_only  # a read-only file cannot be switched to WAL or synced
                else functools.partial(_sqlite_on_connect, sqlite_sync),
            )
            event.listen(engine, "begin", _sqlite_on_begin)
            self._write_engine = engine.execution_options(**{_SQLITE_BEGIN_OPTION: "IMMEDIATE"})
            self._snapshot_engine = engine  # a SQLite transaction reads one snapshot anyway
        elif engine.dialect.name == "postgresql":
            self._dialect = "postgresql"
            self._write_engine = engine
            # READ COMMITTED gives every statement a fresh snapshot; the verifier compares the
            # head with the events and must see both as of one instant.
            self._snapshot_engine = engine.execution_options(isolation_level="REPEATABLE READ")
        else:
            raise ValueError(f"unsupported database {engine.dialect.name!r}")
        self._writer = Writer()
        # How the event loop calls this store: writes on the one writer thread, reads where
        # they do not block the loop (see gateway/store/writer.py).
        self.io = AsyncFace(self._dialect, self._writer)
        # The fleet's members and identity (migration 0008), a repository of its own.
        self.members = members.Members(
            self._read, self._write, self._append_audit, self._dialect, clock
        )

    # -- lifecycle -------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        url: str,
        *,
        clock: Callable[[], dt.datetime] = utcnow,
        engine_options: Mapping[str, Any] | None = None,
        sqlite_sync: Literal["full", "normal"] = "full",
    ) -> Store:
        """Connect to ``url``, bring the schema up to date, and return the store.

        ``sqlite:///path/wardgate.db`` (the parent directory is created) or
        ``postgresql+psycopg://user:password@host:port/db``. ``engine_options`` go to
        ``sqlalchemy.create_engine`` (pool sizes and the like). ``sqlite_sync`` "full" fsyncs
        every commit (events survive a power cut); "normal" leaves that to the WAL checkpoint
        (events survive a gateway crash, the last ones may not survive the host losing power).
        """
        engine, serialize = _create_engine(sa.make_url(url), dict(engine_options or {}))
        try:
            store = cls(engine, clock=clock, serialize=serialize, sqlite_sync=sqlite_sync)
            store._migrate()
        except BaseException:
            engine.dispose()
            raise
        return store

    @classmethod
    def open_read_only(cls, url: str) -> Store:
        """Connect to an existing store to read it, changing nothing: no migration, no file
        created, read-only connections (SQLite ``mode=ro``; PostgreSQL read-only
        transactions). Raises ``StoreError`` when there is no store at ``url`` or its schema
        is not the one this version of Wardgate reads (`wardgate audit verify --store`)."""
        parsed = sa.make_url(url)
        if parsed.get_backend_name() == "sqlite":
            path = parsed.database
            if path in (None, "", ":memory:") or parsed.query.get("uri") is not None:
                raise StoreError(f"a store to read is a sqlite:///PATH file, not {url!r}")
            assert path is not None
            if not Path(path).is_file():
                raise StoreError(f"no store at {path}: the file does not exist")
            parsed = parsed.set(
                database=f"file:{urllib.parse.quote(str(Path(path).resolve()))}",
                query={"mode": "ro", "uri": "true"},
            )
            engine = sa.create_engine(parsed)
        else:
            engine, _ = _create_engine(
                parsed, {"connect_args": {"options": "-c default_transaction_read_only=on"}}
            )
        try:
            store = cls(engine, read_only=True)
            store._check_schema()
        except BaseException:
            engine.dispose()
            raise
        return store

    def _check_schema(self) -> None:
        """Refuse a database whose schema is not this version's (read, never migrated)."""
        expected = alembic.script.ScriptDirectory.from_config(alembic_config()).get_current_head()
        with self._read() as conn:
            if not sa.inspect(conn).has_table("alembic_version"):
                raise StoreError(
                    "not a Wardgate store (it has no schema version); check the store URL"
                )
            found = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
        if found != expected:
            raise StoreError(
                f"the store's schema is at version {found or 'none'}, this wardgate reads "
                f"{expected}: verify with the wardgate version of the gateway that wrote it "
                "(a gateway of this version migrates the store when it starts)"
            )

    def close(self) -> None:
        """Close every pooled connection. The store cannot be used afterwards."""
        self._writer.close()  # what is queued is written first
        self._closed = True
        self._engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def dialect(self) -> Literal["sqlite", "postgresql"]:
        return self._dialect

    @property
    def engine(self) -> sa.Engine:
        """The underlying engine, for maintenance tools and tests; the gateway uses the methods."""
        return self._engine

    def _migrate(self) -> None:
        with self._write() as conn:
            if self._dialect == "postgresql":
                # Gateways started together would otherwise race to create the same tables.
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_MIGRATION_LOCK_KEY)))
            try:
                alembic.command.upgrade(alembic_config(conn), "head")
            except alembic.util.CommandError as exc:
                # Typically a database migrated by a newer gateway than this one.
                raise StoreError(f"cannot migrate the store schema: {exc}") from exc

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Make every call of this thread inside the block one write transaction: all of it
        commits, or none of it. An administrator's change and its audit event (``append_audit``)
        go together this way, so a store that refuses the event refuses the change. A call that
        fails inside rolls back its own part only (a savepoint), as when it runs alone."""
        if self._tx.conn is not None:  # already inside one: the outer block commits
            yield
            return
        with self._write() as conn:  # a commit the database refuses: StoreUnavailable
            self._tx.conn = conn
            try:
                yield
            finally:
                self._tx.conn = None

    @contextlib.contextmanager
    def _joined(self, conn: sa.Connection) -> Iterator[sa.Connection]:
        """A call inside `transaction`: on its connection, in a savepoint of its own."""
        try:
            with conn.begin_nested():
                yield conn
        except sa.exc.OperationalError as exc:
            raise _unavailable(exc) from exc

    @contextlib.contextmanager
    def _read(self, *, snapshot: bool = False) -> Iterator[sa.Connection]:
        self._check_open()
        if self._tx.conn is not None:
            with self._joined(self._tx.conn) as conn:
                yield conn
            return
        engine = self._snapshot_engine if snapshot else self._engine
        try:
            with self._serial, engine.begin() as conn:
                yield conn
        except sa.exc.OperationalError as exc:
            raise _unavailable(exc) from exc

    @contextlib.contextmanager
    def _write(self, *, fsync: bool = True) -> Iterator[sa.Connection]:
        """A write transaction. ``fsync=False`` (SQLite): the commit is not synced on its own,
        for bookkeeping the audit log also records (session rows, budget usage). In WAL mode
        it survives a gateway crash at once, and a host power cut from the next synced commit
        on (any audit event), which syncs the one WAL file everything before it is in."""
        self._check_open()
        if self._tx.conn is not None:
            with self._joined(self._tx.conn) as conn:
                yield conn
            return
        try:
            with self._serial, self._write_engine.connect() as conn:
                relaxed = self._relaxable and not fsync
                if relaxed:  # outside the transaction: SQLite refuses the change inside one
                    _set_synchronous(conn, "NORMAL")
                try:
                    with conn.begin():
                        yield conn
                finally:
                    if relaxed:
                        try:
                            _set_synchronous(conn, "FULL")
                        except Exception:
                            conn.invalidate()  # never back in the pool without its fsync
                            raise
        except sa.exc.OperationalError as exc:
            raise _unavailable(exc) from exc

    def check_writable(self) -> None:
        """A write transaction that changes nothing (readiness probes): raises
        StoreUnavailable when the store would refuse writes. SQLite's BEGIN IMMEDIATE takes the
        write lock; on PostgreSQL a transaction id is assigned and committed, which a
        read-only server (a standby, a full disk's emergency mode) refuses."""
        with self._write() as conn:
            if self._dialect == "postgresql":
                conn.execute(sa.text("SELECT txid_current()"))
            else:
                conn.execute(sa.text("SELECT 1"))

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError("the store is closed")

    def _upsert(
        self, table: sa.Table, values: Mapping[str, Any], update: Iterable[str]
    ) -> sa.Insert:
        """INSERT that updates the ``update`` columns when the primary key exists already."""
        key = [c.name for c in table.primary_key.columns]
        if self._dialect == "postgresql":
            pg = postgresql.insert(table).values(dict(values))
            return pg.on_conflict_do_update(
                index_elements=key, set_={c: pg.excluded[c] for c in update}
            )
        lite = sqlite.insert(table).values(dict(values))
        return lite.on_conflict_do_update(
            index_elements=key, set_={c: lite.excluded[c] for c in update}
        )

    def _insert_ignore(self, table: sa.Table, values: Mapping[str, Any]) -> sa.Insert:
        """INSERT that does nothing when the primary key exists already."""
        if self._dialect == "postgresql":
            return postgresql.insert(table).values(dict(values)).on_conflict_do_nothing()
        return sqlite.insert(table).values(dict(values)).on_conflict_do_nothing()

    # -- agents ----------------------------------------------------------------------------

    def create_agent(self, name: str, pool: str, secret_hash: bytes) -> AgentRecord:
        """Register an agent. Names are never reused, so a revoked name stays taken."""
        _check_hash(secret_hash, "secret_hash")
        stmt = (
            sa.insert(t.agents)
            .values(name=name, pool=pool, secret_hash=secret_hash, created_at=self._clock())
            .returning(*t.agents.c)
        )
        try:
            with self._write() as conn:
                row = conn.execute(stmt).one()
        except sa.exc.IntegrityError as exc:
            raise AlreadyExists(f"agent {name!r} exists already") from exc
        return _agent(row)

    def get_agent(self, name: str) -> AgentRecord | None:
        with self._read() as conn:
            row = conn.execute(sa.select(t.agents).where(t.agents.c.name == name)).first()
        return None if row is None else _agent(row)

    def list_agents(self) -> list[AgentRecord]:
        with self._read() as conn:
            rows = conn.execute(sa.select(t.agents).order_by(t.agents.c.name)).all()
        return [_agent(row) for row in rows]

    def revoke_agent(self, name: str) -> AgentRecord:
        """Revoke an agent; revoking twice keeps the first revocation time."""
        with self._write() as conn:
            conn.execute(
                sa.update(t.agents)
                .where(t.agents.c.name == name, t.agents.c.revoked_at.is_(None))
                .values(revoked_at=self._clock())
            )
            row = conn.execute(sa.select(t.agents).where(t.agents.c.name == name)).first()
        if row is None:
            raise NotFound(f"no agent {name!r}")
        return _agent(row)

    def rotate_agent_secret(self, name: str, secret_hash: bytes) -> AgentRecord:
        """Replace an agent's secret hash; a revoked agent becomes valid again."""
        _check_hash(secret_hash, "secret_hash")
        with self._write() as conn:
            row = conn.execute(
                sa.update(t.agents)
                .where(t.agents.c.name == name)
                .values(secret_hash=secret_hash, revoked_at=None)
                .returning(*t.agents.c)
            ).first()
        if row is None:
            raise NotFound(f"no agent {name!r}")
        return _agent(row)

    # -- users and tokens ------------------------------------------------------------------

    def ensure_user(
        self, name: str, *, is_admin: bool = False, groups: tuple[str, ...] = ()
    ) -> UserRecord:
        """Create the user, or update its admin flag and groups; ``created_at`` is kept."""
        stmt = self._upsert(
            t.users,
            {
                "name": name,
                "is_admin": is_admin,
                "groups": list(groups),
                "created_at": self._clock(),
            },
            update=("is_admin", "groups"),
        ).returning(*t.users.c)
        with self._write() as conn:
            row = conn.execute(stmt).one()
        return _user(row)

    def get_user(self, name: str) -> UserRecord | None:
        with self._read() as conn:
            row = conn.execute(sa.select(t.users).where(t.users.c.name == name)).first()
        return None if row is None else _user(row)

    def list_users(self) -> list[UserRecord]:
        with self._read() as conn:
            rows = conn.execute(sa.select(t.users).order_by(t.users.c.name)).all()
        return [_user(row) for row in rows]

    def add_token(
        self,
        user: str,
        token_hash: bytes,
        *,
        expires_at: dt.datetime | None = None,
        label: str = "",
        kind: str = "bearer",
        login_id: str | None = None,
        connection: str | None = None,
        scopes: Sequence[str] | None = None,
        parent_id: str | None = None,
    ) -> TokenRecord:
        """Record the digest of a bearer token issued to ``user``, who must exist."""
        _check_hash(token_hash, "token_hash")
        if expires_at is not None:
            _check_aware(expires_at, "expires_at")
        if kind not in TOKEN_KINDS:
            raise ValueError(f"unknown token kind {kind!r}")
        stmt = (
            sa.insert(t.tokens)
            .values(
                id=new_id(),
                user=user,
                token_hash=token_hash,
                created_at=self._clock(),
                expires_at=expires_at,
                label=label,
                kind=kind,
                login_id=login_id,
                connection=connection,
                scopes=None if scopes is None else list(scopes),
                parent_id=parent_id,
            )
            .returning(*t.tokens.c)
        )
        try:
            with self._write() as conn:
                exists = conn.execute(
                    sa.select(t.users.c.name).where(t.users.c.name == user)
                ).first()
                if exists is None:
                    raise NotFound(f"no user {user!r}")
                row = conn.execute(stmt).one()
        except sa.exc.IntegrityError as exc:
            raise AlreadyExists("a token with this hash exists already") from exc
        return _token(row)

    def find_token(self, token_hash: bytes) -> tuple[TokenRecord, UserRecord] | None:
        """The token with this hash and its user, revoked and expired tokens included.

        The caller decides validity (``TokenRecord.valid_at``), so it can log why it refused.
        """
        found = self.find_credential(token_hash)
        return None if found is None else (found[0], found[1])

    def find_credential(
        self, token_hash: bytes
    ) -> tuple[TokenRecord, UserRecord, LoginRecord | None] | None:
        """The token with this hash, its user and its sign-in, whatever their validity."""
        stmt = (
            sa.select(t.tokens, t.users, t.logins)
            .join(t.users, t.users.c.name == t.tokens.c.user)
            .outerjoin(t.logins, t.logins.c.id == t.tokens.c.login_id)
            .where(t.tokens.c.token_hash == token_hash)
        )
        with self._read() as conn:
            row = conn.execute(stmt).first()
        if row is None:
            return None
        m = row._mapping
        token = _token_from(lambda c: m[t.tokens.c[c]])
        user = _user_from(lambda c: m[t.users.c[c]])
        login = None
        if m[t.logins.c.id] is not None:
            login = _login_from(lambda c: m[t.logins.c[c]])
        return token, user, login

    def get_token(self, token_id: str) -> TokenRecord | None:
        with self._read() as conn:
            row = conn.execute(sa.select(t.tokens).where(t.tokens.c.id == token_id)).first()
        return None if row is None else _token(row)

    def list_tokens(self, user: str) -> list[TokenRecord]:
        with self._read() as conn:
            rows = conn.execute(
                sa.select(t.tokens)
                .where(t.tokens.c.user == user)
                .order_by(t.tokens.c.created_at, t.tokens.c.id)
            ).all()
        return [_token(row) for row in rows]

    def revoke_token(self, token_id: str) -> None:
        """Revoke a token and the credentials minted from it; revoking twice keeps the first
        revocation time."""
        with self._write() as conn:
            conn.execute(
                sa.update(t.tokens)
                .where(
                    sa.or_(t.tokens.c.id == token_id, t.tokens.c.parent_id == token_id),
                    t.tokens.c.revoked_at.is_(None),
                )
                .values(revoked_at=self._clock())
            )
            exists = conn.execute(sa.select(t.tokens.c.id).where(t.tokens.c.id == token_id))
            if exists.first() is None:
                raise NotFound(f"no token {token_id!r}")

    def revoke_tokens_labelled(self, user: str, label: str) -> int:
        """Revoke ``user``'s live tokens carrying ``label``; returns how many were revoked."""
        with self._write() as conn:
            result = conn.execute(
                sa.update(t.tokens)
                .where(
                    t.tokens.c.user == user,
                    t.tokens.c.label == label,
                    t.tokens.c.revoked_at.is_(None),
                )
                .values(revoked_at=self._clock())
            )
        return result.rowcount

    def revoke_token_if_live(self, token_id: str) -> bool:
        """Revoke a token unless it was revoked already; True when this call revoked it.

        Refresh-token rotation relies on it: of two concurrent uses of one refresh token,
        exactly one wins, and a replay of a rotated one is recognised as such.
        """
        with self._write() as conn:
            result = conn.execute(
                sa.update(t.tokens)
                .where(t.tokens.c.id == token_id, t.tokens.c.revoked_at.is_(None))
                .values(revoked_at=self._clock())
            )
        return result.rowcount == 1

    # -- identities ------------------------------------------------------------------------

    def bind_person(
        self, name: str, *, issuer: str, subject: str, groups: tuple[str, ...]
    ) -> UserRecord:
        """The person ``name`` signed in at ``issuer`` as ``subject``; create or update them.

        A name is bound to one (issuer, subject) for good: a name that belongs to a machine,
        to a local or bootstrap user, or to another subject raises ``Conflict``, so a crafted
        username claim can never take over somebody else's account.
        """
        now = self._clock()
        with self._write() as conn:
            row = conn.execute(
                sa.select(t.users).where(t.users.c.name == name).with_for_update()
            ).first()
            if row is None:
                other = conn.execute(
                    sa.select(t.users.c.name).where(
                        t.users.c.issuer == issuer, t.users.c.subject == subject
                    )
                ).first()
                if other is not None:
                    raise Conflict(
                        f"this IdP subject is already bound to user {other.name!r}, not {name!r}"
                    )
                created = conn.execute(
                    self._insert_ignore(
                        t.users,
                        {
                            "name": name,
                            "is_admin": False,
                            "groups": list(groups),
                            "created_at": now,
                            "kind": "person",
                            "issuer": issuer,
                            "subject": subject,
                        },
                    ).returning(*t.users.c)
                ).first()
                if created is not None:
                    return _user(created)
                row = conn.execute(
                    sa.select(t.users).where(t.users.c.name == name).with_for_update()
                ).one()
            if row.kind != "person" or row.issuer != issuer or row.subject != subject:
                raise Conflict(f"user {name!r} belongs to another identity")
            updated = conn.execute(
                sa.update(t.users)
                .where(t.users.c.name == name)
                .values(groups=list(groups))
                .returning(*t.users.c)
            ).one()
        return _user(updated)

    def ensure_machine(self, name: str, *, kind: str, groups: tuple[str, ...]) -> UserRecord:
        """Create or update the machine user ``name`` of ``kind`` (service or workload).

        A name that exists with another kind raises ``Conflict``: a machine never becomes a
        person, nor a service account a workload identity.
        """
        if kind not in ("service", "workload"):
            raise ValueError(f"{kind!r} is not a machine kind")
        with self._write() as conn:
            row = conn.execute(
                sa.select(t.users).where(t.users.c.name == name).with_for_update()
            ).first()
            if row is None:
                created = conn.execute(
                    self._insert_ignore(
                        t.users,
                        {
                            "name": name,
                            "is_admin": False,
                            "groups": list(groups),
                            "created_at": self._clock(),
                            "kind": kind,
                        },
                    ).returning(*t.users.c)
                ).first()
                if created is not None:
                    return _user(created)
                row = conn.execute(
                    sa.select(t.users).where(t.users.c.name == name).with_for_update()
                ).one()
            if row.kind != kind:
                raise Conflict(f"user {name!r} exists and is a {row.kind}, not a {kind}")
            updated = conn.execute(
                sa.update(t.users)
                .where(t.users.c.name == name)
                .values(groups=list(groups))
                .returning(*t.users.c)
            ).one()
        return _user(updated)

    def set_local_credentials(
        self,
        name: str,
        *,
        password_hash: str,
        totp_secret: str | None,
        groups: tuple[str, ...] = (),
    ) -> UserRecord:
        """Create or update a local person (password + TOTP), for setups without an IdP."""
        if totp_secret is not None and not totp_secret.startswith("enc:"):
            raise ValueError("the TOTP secret must be sealed before it is stored")
        with self._write() as conn:
            row = conn.execute(
                sa.select(t.users).where(t.users.c.name == name).with_for_update()
            ).first()
            if row is not None and (row.kind != "person" or row.issuer is not None):
                raise Conflict(f"user {name!r} is not a local person")
            if row is None:
                stmt: sa.Insert | sa.Update = sa.insert(t.users).values(
                    name=name,
                    is_admin=False,
                    groups=list(groups),
                    created_at=self._clock(),
                    kind="person",
                    password_hash=password_hash,
                    totp_secret=totp_secret,
                )
            else:
                stmt = (
                    sa.update(t.users)
                    .where(t.users.c.name == name)
                    .values(password_hash=password_hash, totp_secret=totp_secret)
                )
            conn.execute(stmt)
            out = conn.execute(sa.select(t.users).where(t.users.c.name == name)).one()
        return _user(out)

    def get_local_credentials(self, name: str) -> tuple[str, str | None] | None:
        """(password hash, sealed TOTP secret) of a local user; None for everyone else."""
        with self._read() as conn:
            row = conn.execute(
                sa.select(t.users.c.password_hash, t.users.c.totp_secret).where(
                    t.users.c.name == name, t.users.c.password_hash.is_not(None)
                )
            ).first()
        return None if row is None else (row.password_hash, row.totp_secret)

    def set_user_disabled(self, name: str, disabled: bool) -> UserRecord:
        """Disable (revoking every sign-in and token of the user) or re-enable a user."""
        now = self._clock()
        with self._write() as conn:
            row = conn.execute(
                sa.update(t.users)
                .where(t.users.c.name == name)
                .values(disabled_at=now if disabled else None)
                .returning(*t.users.c)
            ).first()
            if row is None:
                raise NotFound(f"no user {name!r}")
            if disabled:
                conn.execute(
                    sa.update(t.logins)
                    .where(t.logins.c.user == name, t.logins.c.revoked_at.is_(None))
                    .values(revoked_at=now)
                )
                conn.execute(
                    sa.update(t.tokens)
                    .where(t.tokens.c.user == name, t.tokens.c.revoked_at.is_(None))
                    .values(revoked_at=now)
                )
        return _user(row)

    # -- sign-ins --------------------------------------------------------------------------

    def create_login(
        self,
        user: str,
        *,
        method: str,
        expires_at: dt.datetime,
        idle_timeout: int | None = None,
        issuer: str | None = None,
        subject: str | None = None,
        idp_refresh_token: str | None = None,
    ) -> LoginRecord:
        """Record a sign-in of ``user``, who must exist."""
        _check_aware(expires_at, "expires_at")
        _check_sealed(idp_refresh_token)
        now = self._clock()
        stmt = (
            sa.insert(t.logins)
            .values(
                id=new_id(),
                user=user,
                method=method,
                issuer=issuer,
                subject=subject,
                created_at=now,
                expires_at=expires_at,
                last_seen_at=now,
                idle_timeout=idle_timeout,
                idp_refresh_token=idp_refresh_token,
            )
            .returning(*t.logins.c)
        )
        try:
            with self._write() as conn:
                row = conn.execute(stmt).one()
        except sa.exc.IntegrityError as exc:
            raise NotFound(f"no user {user!r}") from exc
        return _login(row)

    def get_login(self, login_id: str) -> LoginRecord | None:
        with self._read() as conn:
            row = conn.execute(sa.select(t.logins).where(t.logins.c.id == login_id)).first()
        return None if row is None else _login(row)

    def list_logins(self, user: str | None = None) -> list[LoginRecord]:
        stmt = sa.select(t.logins)
        if user is not None:
            stmt = stmt.where(t.logins.c.user == user)
        with self._read() as conn:
            rows = conn.execute(stmt.order_by(t.logins.c.created_at, t.logins.c.id)).all()
        return [_login(row) for row in rows]

    def touch_login(self, login_id: str, *, min_interval: float = 0.0) -> None:
        """Move the sign-in's idle clock, unless it moved less than ``min_interval`` s ago."""
        now = self._clock()
        with self._write() as conn:
            conn.execute(
                sa.update(t.logins)
                .where(
                    t.logins.c.id == login_id,
                    t.logins.c.last_seen_at <= now - dt.timedelta(seconds=min_interval),
                )
                .values(last_seen_at=now)
            )

    def set_login_idp_refresh(self, login_id: str, idp_refresh_token: str | None) -> None:
        _check_sealed(idp_refresh_token)
        with self._write() as conn:
            conn.execute(
                sa.update(t.logins)
                .where(t.logins.c.id == login_id)
                .values(idp_refresh_token=idp_refresh_token)
            )

    def revoke_login(self, login_id: str) -> LoginRecord:
        """Revoke a sign-in and every token issued under it; the first revocation time stays."""
        now = self._clock()
        with self._write() as conn:
            conn.execute(
                sa.update(t.logins)
                .where(t.logins.c.id == login_id, t.logins.c.revoked_at.is_(None))
                .values(revoked_at=now)
            )
            conn.execute(
                sa.update(t.tokens)
                .where(t.tokens.c.login_id == login_id, t.tokens.c.revoked_at.is_(None))
                .values(revoked_at=now)
            )
            row = conn.execute(sa.select(t.logins).where(t.logins.c.id == login_id)).first()
        if row is None:
            raise NotFound(f"no sign-in {login_id!r}")
        return _login(row)

    def invalid_credentials(self, token_ids: Iterable[str]) -> set[str]:
        """Those of ``token_ids`` that were revoked, directly, through their sign-in or by
        disabling their user (or are gone). Expiry is not counted: a session outlives the
        short-lived credential that opened it, not its revocation."""
        wanted = set(token_ids)
        if not wanted:
            return set()
        stmt = (
            sa.select(
                t.tokens.c.id,
                t.tokens.c.revoked_at,
                t.logins.c.revoked_at.label("login_revoked_at"),
                t.users.c.disabled_at,
            )
            .join(t.users, t.users.c.name == t.tokens.c.user)
            .outerjoin(t.logins, t.logins.c.id == t.tokens.c.login_id)
            .where(t.tokens.c.id.in_(sorted(wanted)))
        )
        with self._read() as conn:
            rows = conn.execute(stmt).all()
        alive = {
            r.id
            for r in rows
            if r.revoked_at is None and r.login_revoked_at is None and r.disabled_at is None
        }
        return wanted - alive

    # -- workload token replay (migration 0006) --------------------------------------------

    def use_token_once(self, digest: bytes, *, trust: str, expires_at: dt.datetime) -> bool:
        """Remember a single-use token until ``expires_at``; False if it was used already.

        ``INSERT ... ON CONFLICT DO NOTHING`` on the digest: of two replicas exchanging the
        same token at once, exactly one inserts. Expired entries are deleted first, so the
        table holds only tokens that could still be presented.
        """
        _check_hash(digest, "digest")
        _check_aware(expires_at, "expires_at")
        now = self._clock()
        table = t.token_replay
        with self._write() as conn:
            conn.execute(sa.delete(table).where(table.c.expires_at < now))
            values = {"digest": digest, "trust": trust, "used_at": now, "expires_at": expires_at}
            # RETURNING, not rowcount: psycopg reports -1 for an INSERT that did nothing.
            stmt = self._insert_ignore(table, values).returning(table.c.digest)
            inserted = conn.execute(stmt).first()
        return inserted is not None

    def forget_token_use(self, digest: bytes) -> None:
        """Undo ``use_token_once`` when the exchange failed after it (the token was not
        used up: the job may retry it)."""
        _check_hash(digest, "digest")
        with self._write() as conn:
            conn.execute(sa.delete(t.token_replay).where(t.token_replay.c.digest == digest))

    # -- connections -----------------------------------------------------------------------

    def upsert_connection(self, conn: ConnectionRecord) -> tuple[ConnectionRecord, bool]:
        """Create or replace a connection; the flag is False when nothing changed.

        The record's own timestamps are ignored: the store sets ``created_at`` once and moves
        ``updated_at`` only on a real change, so applying the same file twice is a no-op.
        """
        _check_secret_references(conn)
        fields: dict[str, Any] = {
            "type": conn.type,
            "pool": conn.pool,
            "host": conn.host,
            "port": conn.port,
            "options": dict(conn.options),
            "secrets": dict(conn.secrets),
        }
        locked = sa.select(t.connections).where(t.connections.c.name == conn.name).with_for_update()
        now = self._clock()
        with self._write() as db:
            row = db.execute(locked).first()
            if row is None:
                created = db.execute(
                    self._insert_ignore(
                        t.connections,
                        {"name": conn.name, **fields, "created_at": now, "updated_at": now},
                    ).returning(*t.connections.c)
                ).first()
                if created is not None:
                    return _connection(created), True
                # On PostgreSQL a concurrent upsert inserted the row after our SELECT; under
                # READ COMMITTED the next statement sees it, so lock it and compare as usual.
                row = db.execute(locked).one()
            current = _connection(row)
            if all(getattr(current, key) == value for key, value in fields.items()):
                return current, False
            updated = db.execute(
                sa.update(t.connections)
                .where(t.connections.c.name == conn.name)
                .values(**fields, updated_at=now)
                .returning(*t.connections.c)
            ).one()
        return _connection(updated), True

    def get_connection(self, name: str) -> ConnectionRecord | None:
        with self._read() as conn:
            row = conn.execute(sa.select(t.connections).where(t.connections.c.name == name)).first()
        return None if row is None else _connection(row)

    def list_connections(self) -> list[ConnectionRecord]:
        with self._read() as conn:
            rows = conn.execute(sa.select(t.connections).order_by(t.connections.c.name)).all()
        return [_connection(row) for row in rows]

    def delete_connection(self, name: str) -> bool:
        """Delete a connection; False if there was none. Its past sessions are kept."""
        with self._write() as conn:
            result = conn.execute(sa.delete(t.connections).where(t.connections.c.name == name))
        return result.rowcount > 0

    # -- sessions --------------------------------------------------------------------------

    def create_session(self, rec: SessionRecord) -> None:
        _check_aware(rec.started_at, "started_at")
        if rec.ended_at is not None:
            _check_aware(rec.ended_at, "ended_at")
        try:
            with self._write(fsync=False) as conn:
                conn.execute(
                    sa.insert(t.sessions).values(
                        id=rec.id,
                        user=rec.user,
                        connection=rec.connection,
                        protocol=rec.protocol,
                        client_addr=rec.client_addr,
                        agent=rec.agent,
                        started_at=rec.started_at,
                        ended_at=rec.ended_at,
                        status=rec.status,
                        error=rec.error,
                        bytes_up=rec.bytes_up,
                        bytes_down=rec.bytes_down,
                        member=rec.member,
                    )
                )
        except sa.exc.IntegrityError as exc:
            raise AlreadyExists(f"session {rec.id!r} exists already") from exc

    def end_session(
        self,
        session_id: str,
        *,
        status: str,
        error: str | None,
        bytes_up: int,
        bytes_down: int,
        agent: str | None = None,
        ended_at: dt.datetime | None = None,
    ) -> None:
        """Record how a session ended. The first end wins: ending an ended session changes nothing.

        ``agent``, when given, records the agent that carried the session; otherwise the agent
        stored at creation is kept. ``ended_at`` (default: now) is for an end recorded late.
        """
        if status not in ENDED_SESSION_STATUSES:
            raise ValueError(f"an ended session is closed or failed, not {status!r}")
        if ended_at is not None:
            _check_aware(ended_at, "ended_at")
        values: dict[str, Any] = {
            "status": status,
            "error": error,
            "bytes_up": bytes_up,
            "bytes_down": bytes_down,
            "ended_at": ended_at or self._clock(),
        }
        if agent is not None:
            values["agent"] = agent
        with self._write(fsync=False) as conn:
            conn.execute(
                sa.update(t.sessions)
                .where(t.sessions.c.id == session_id, t.sessions.c.ended_at.is_(None))
                .values(**values)
            )
            exists = conn.execute(sa.select(t.sessions.c.id).where(t.sessions.c.id == session_id))
            if exists.first() is None:
                raise NotFound(f"no session {session_id!r}")

    def get_session(self, session_id: str) -> SessionRecord | None:
        with self._read() as conn:
            row = conn.execute(sa.select(t.sessions).where(t.sessions.c.id == session_id)).first()
        return None if row is None else _session(row)

    def list_sessions(
        self,
        *,
        user: str | None = None,
        connection: str | None = None,
        since: dt.datetime | None = None,
        before: tuple[dt.datetime, str] | None = None,
        limit: int = 100,
    ) -> list[SessionRecord]:
        """Sessions newest first; ``since`` keeps those started at or after it, ``before``
        those after the (started_at, id) of the last row of a previous page (keyset paging:
        sessions that start meanwhile shift no page)."""
        stmt = sa.select(t.sessions)
        if before is not None:
            _check_aware(before[0], "before")
            at, session_id = before
            stmt = stmt.where(
                (t.sessions.c.started_at < at)
                | ((t.sessions.c.started_at == at) & (t.sessions.c.id < session_id))
            )
        if user is not None:
            stmt = stmt.where(t.sessions.c.user == user)
        if connection is not None:
            stmt = stmt.where(t.sessions.c.connection == connection)
        if since is not None:
            _check_aware(since, "since")
            stmt = stmt.where(t.sessions.c.started_at >= since)
        stmt = stmt.order_by(t.sessions.c.started_at.desc(), t.sessions.c.id.desc()).limit(limit)
        with self._read() as conn:
            rows = conn.execute(stmt).all()
        return [_session(row) for row in rows]

    # -- approvals: reviews, votes, identity owners (gateway/reviews) --------------------------

    def create_review(self, rec: ReviewRecord) -> None:
        _check_aware(rec.created_at, "created_at")
        _check_aware(rec.deadline, "deadline")
        with self._write() as conn:
            conn.execute(
                sa.insert(t.reviews).values(
                    id=rec.id,
                    kind=rec.kind,
                    status=rec.status,
                    requester=rec.requester,
                    connection=rec.connection,
                    session_id=rec.session_id,
                    protocol=rec.protocol,
                    text=rec.text,
                    reason=rec.reason,
                    rules=list(rec.rules),
                    terms=rec.terms,
                    access=rec.access,
                    duration=rec.duration,
                    created_at=rec.created_at,
                    deadline=rec.deadline,
                )
            )

    def _review(self, conn: sa.Connection, review_id: str, *, lock: bool = False) -> ReviewRecord:
        stmt = sa.select(t.reviews).where(t.reviews.c.id == review_id)
        if lock and self._dialect == "postgresql":
            stmt = stmt.with_for_update()  # votes on one review take turns across replicas
        row = conn.execute(stmt).first()
        if row is None:
            raise NotFound(f"no review {review_id!r}")
        votes = conn.execute(
            sa.select(t.review_votes)
            .where(t.review_votes.c.review_id == review_id)
            .order_by(t.review_votes.c.voted_at)
        ).all()
        return _review_record(row, votes)

    def get_review(self, review_id: str) -> ReviewRecord | None:
        with self._read() as conn:
            try:
                return self._review(conn, review_id)
            except NotFound:
                return None

    def list_reviews(
        self,
        *,
        status: str | None = None,
        kind: str | None = None,
        requester: str | None = None,
        limit: int = 100,
    ) -> list[ReviewRecord]:
        """Reviews newest first, without their votes."""
        stmt = sa.select(t.reviews)
        if status is not None:
            stmt = stmt.where(t.reviews.c.status == status)
        if kind is not None:
            stmt = stmt.where(t.reviews.c.kind == kind)
        if requester is not None:
            stmt = stmt.where(t.reviews.c.requester == requester)
        stmt = stmt.order_by(t.reviews.c.created_at.desc(), t.reviews.c.id).limit(limit)
        with self._read() as conn:
            return [_review_record(row, ()) for row in conn.execute(stmt).all()]

    def vote_review(
        self,
        review_id: str,
        judge: Callable[[ReviewRecord], tuple[VoteRecord, Mapping[str, Any] | None]],
    ) -> ReviewRecord:
        """Add a vote and maybe decide, in one transaction.

        ``judge`` sees the review with its votes (locked against concurrent votes); it raises
        to refuse the vote, or returns the vote and, when the vote decides the review, the
        columns to set (status, decided_at, decision, grant_expires_at).
        """
        with self._write() as conn:
            review = self._review(conn, review_id, lock=True)
            vote, decided = judge(review)
            conn.execute(
                sa.insert(t.review_votes).values(
                    review_id=review_id,
                    voter=vote.voter,
                    controllers=list(vote.controllers),
                    vote=vote.vote,
                    reason=vote.reason,
                    voted_at=vote.voted_at,
                    expires_at=vote.expires_at,
                )
            )
            if decided:
                conn.execute(
                    sa.update(t.reviews).where(t.reviews.c.id == review_id).values(**decided)
                )
            return self._review(conn, review_id)

    def finish_review(
        self, review_id: str, *, status: str, decision: str, at: dt.datetime
    ) -> tuple[ReviewRecord, bool]:
        """End a pending review (expired, cancelled); (the review, whether this call ended it)."""
        with self._write() as conn:
            changed = conn.execute(
                sa.update(t.reviews)
                .where(t.reviews.c.id == review_id, t.reviews.c.status == "pending")
                .values(status=status, decision=decision, decided_at=at)
            ).rowcount
            return self._review(conn, review_id), bool(changed)

    # Kubernetes reviews: the client is answered at once and runs its request again; an
    # approval of the identical request (same requester, connection, protocol and text)
    # lets it pass.
    def matching_reviews(
        self, *, requester: str, connection: str, protocol: str, text: str, limit: int = 5
    ) -> list[ReviewRecord]:
        """Statement reviews of exactly this request, newest first, with their votes."""
        stmt = (
            sa.select(t.reviews.c.id)
            .where(
                t.reviews.c.requester == requester,
                t.reviews.c.kind == "statement",
                t.reviews.c.connection == connection,
                t.reviews.c.protocol == protocol,
                t.reviews.c.text == text,
            )
            .order_by(t.reviews.c.created_at.desc(), t.reviews.c.id)
            .limit(limit)
        )
        with self._read() as conn:
            ids = conn.execute(stmt).scalars().all()
            return [self._review(conn, i) for i in ids]

    def granted_connections(self, user: str, at: dt.datetime) -> dict[str, dt.datetime]:
        """Connections `user` holds an approved, unexpired access request for -> its end."""
        with self._read() as conn:
            rows = conn.execute(
                sa.select(t.reviews.c.connection, t.reviews.c.grant_expires_at).where(
                    t.reviews.c.requester == user,
                    t.reviews.c.kind == "access",
                    t.reviews.c.status == "approved",
                    t.reviews.c.grant_expires_at > at,
                )
            ).all()
        out: dict[str, dt.datetime] = {}
        for r in rows:
            out[r.connection] = max(r.grant_expires_at, out.get(r.connection, r.grant_expires_at))
        return out

    def add_owner(self, identity: str, owner: str) -> None:
        with self._write() as conn:
            if (
                conn.execute(sa.select(t.users.c.name).where(t.users.c.name == identity)).first()
                is None
            ):
                raise NotFound(f"no user {identity!r}")
            conn.execute(
                self._insert_ignore(
                    t.identity_owners,
                    {"identity": identity, "owner": owner, "created_at": self._clock()},
                )
            )

    def owners_of(self, identities: Iterable[str]) -> dict[str, set[str]]:
        names = list(identities)
        out: dict[str, set[str]] = {n: set() for n in names}
        with self._read() as conn:
            rows = conn.execute(
                sa.select(t.identity_owners).where(t.identity_owners.c.identity.in_(names))
            ).all()
        for r in rows:
            out[r.identity].add(r.owner)
        return out

    # -- audit log -------------------------------------------------------------------------

    def append_audit(
        self,
        kind: str,
        *,
        actor: str = "-",
        session_id: str | None = None,
        data: Mapping[str, Any] | None = None,
    ) -> AuditEvent:
        """Append an event to the gateway-wide chain and return it as stored.

        ``data`` must be JSON-serialisable; it is returned as it reads back (tuples become
        lists, non-string keys become strings).
        """
        payload = chain.canonical_json(dict(data or {}))
        with self._write() as conn:
            return self._append_audit(conn, kind, actor, session_id, payload)

    def audit_writer(self) -> AuditWriter:
        """A writer for the append hot path, on its own connection; use it from one thread."""
        self._check_open()
        return AuditWriter(self._engine, self._clock)

    def _append_audit(
        self, conn: sa.Connection, kind: str, actor: str, session_id: str | None, payload: bytes
    ) -> AuditEvent:
        """One event in ``conn``'s write transaction, through the one chain implementation."""
        data = json.loads(payload)  # returned as it reads back: tuples become lists
        (event,) = extend_chain(conn, self._clock, [(kind, actor, session_id, data)])
        return event

    def list_audit(
        self,
        *,
        kind: str | None = None,
        session_id: str | None = None,
        after_seq: int = 0,
        limit: int = 1000,
        contains: str | None = None,
    ) -> list[AuditEvent]:
        """Events with seq greater than ``after_seq``, oldest first; page with the last seq.

        ``contains`` keeps events whose data (as stored JSON) holds that text, e.g. a table
        name in recorded statements.
        """
        stmt = sa.select(t.audit_events).where(t.audit_events.c.seq > after_seq)
        if kind is not None:
            stmt = stmt.where(t.audit_events.c.kind == kind)
        if contains:
            needle = json.dumps(contains, ensure_ascii=False)[1:-1]  # as JSON escapes it
            stmt = stmt.where(t.audit_events.c.data.contains(needle, autoescape=True))
        if session_id is not None:
            stmt = stmt.where(t.audit_events.c.session_id == session_id)
        stmt = stmt.order_by(t.audit_events.c.seq).limit(limit)
        with self._read() as conn:
            rows = conn.execute(stmt).all()
        events: list[AuditEvent] = []
        for row in rows:
            event = _audit_event(row)
            if event is None:
                raise StoreError(f"audit event {row.seq} has unreadable data")
            events.append(event)
        return events

    def verify_audit(self) -> int | None:
        """None if the chain is intact, else the seq of the first event that does not verify."""
        return self.check_audit().first_bad_seq

    def check_audit(self) -> chain.ChainCheck:
        """Verify the chain: how many events were checked, where and how it first breaks.

        Edited, removed or reordered events are found, removals at the end too (through the
        head row). This proves integrity against casual edits, not against someone who rewrites
        the whole chain and the head: anchor ``audit_head`` elsewhere for that.
        """
        with self._read(snapshot=True) as conn:
            head = conn.execute(
                sa.select(t.audit_head.c.seq, t.audit_head.c.hash).where(t.audit_head.c.id == 1)
            ).first()
            # Streamed, so a long log is checked in constant memory; closed explicitly because
            # the verifier may stop early, leaving PostgreSQL's server-side cursor open.
            with conn.execution_options(yield_per=1000).execute(
                sa.select(t.audit_events).order_by(t.audit_events.c.seq)
            ) as rows:
                return chain.check_chain(
                    _verifiable(rows), head=None if head is None else (head.seq, head.hash)
                )

    # -- policy versions and budget usage (migration 0004) ---------------------------------

    def latest_policy_version(self) -> int:
        """The number of the newest policy version, 0 when none: cheap enough per session."""
        with self._read() as conn:
            value = conn.execute(sa.select(sa.func.max(t.policy_versions.c.version))).scalar()
        return int(value or 0)

    def get_policy_version(self, version: int | None = None) -> PolicyVersionRecord | None:
        """Version `version`, or the newest when None."""
        stmt = sa.select(t.policy_versions)
        if version is None:
            stmt = stmt.order_by(t.policy_versions.c.version.desc()).limit(1)
        else:
            stmt = stmt.where(t.policy_versions.c.version == version)
        with self._read() as conn:
            row = conn.execute(stmt).first()
        return None if row is None else _policy_version(row)

    def list_policy_versions(self) -> list[PolicyVersionRecord]:
        with self._read() as conn:
            rows = conn.execute(
                sa.select(t.policy_versions).order_by(t.policy_versions.c.version)
            ).all()
        return [_policy_version(row) for row in rows]

    def add_policy_version(
        self,
        document: str,
        sha256: str,
        *,
        applied_by: str,
        comment: str | None = None,
        only_if_empty: bool = False,
    ) -> tuple[PolicyVersionRecord, bool]:
        """Make `document` the newest version unless it is already; False when unchanged.

        With `only_if_empty`, only when there is no version at all (seeding from a config).
        Writers are serialised (an advisory lock on PostgreSQL, the write lock on SQLite), so
        concurrent applies get consecutive numbers.
        """
        with self._write() as conn:
            if self._dialect == "postgresql":
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_POLICY_LOCK_KEY)))
            row = conn.execute(
                sa.select(t.policy_versions).order_by(t.policy_versions.c.version.desc()).limit(1)
            ).first()
            if row is not None and (only_if_empty or row.sha256 == sha256):
                return _policy_version(row), False
            record = PolicyVersionRecord(
                version=(row.version if row is not None else 0) + 1,
                document=document,
                sha256=sha256,
                applied_by=applied_by,
                applied_at=self._clock(),
                comment=comment,
            )
            conn.execute(
                sa.insert(t.policy_versions).values(
                    version=record.version,
                    document=record.document,
                    sha256=record.sha256,
                    applied_by=record.applied_by,
                    applied_at=record.applied_at,
                    comment=record.comment,
                )
            )
        return record, True

    def add_budget_usage(
        self, user: str, connection: str, usage: Mapping[tuple[dt.date, str], tuple[int, int]]
    ) -> dict[tuple[dt.date, str], tuple[int, int]]:
        """Add (rows, bytes) per (day, budget) atomically; returns the new totals.

        ``INSERT ... ON CONFLICT DO UPDATE SET rows = rows + excluded.rows``: every gateway
        replica adds to the same row without reading it first, so no increment is lost.
        """
        now = self._clock()
        totals: dict[tuple[dt.date, str], tuple[int, int]] = {}
        table = t.budget_usage
        with self._write(fsync=False) as conn:
            for (day, budget), (rows, nbytes) in sorted(usage.items()):
                values = {
                    "day": day,
                    "user": user,
                    "connection": connection,
                    "budget": budget,
                    "rows": rows,
                    "bytes": nbytes,
                    "updated_at": now,
                }
                insert = (
                    postgresql.insert(table).values(values)
                    if self._dialect == "postgresql"
                    else sqlite.insert(table).values(values)
                )
                stmt = insert.on_conflict_do_update(
                    index_elements=[c.name for c in table.primary_key.columns],
                    set_={
                        "rows": table.c.rows + insert.excluded.rows,
                        "bytes": table.c.bytes + insert.excluded.bytes,
                        "updated_at": insert.excluded.updated_at,
                    },
                ).returning(table.c.rows, table.c.bytes)
                row = conn.execute(stmt).one()
                totals[(day, budget)] = (int(row.rows), int(row.bytes))
        return totals

    def budget_usage(
        self, day: dt.date, *, user: str | None = None, connection: str | None = None
    ) -> list[tuple[str, str, str, int, int]]:
        """(user, connection, budget, rows, bytes) of `day`, optionally for one user/connection."""
        table = t.budget_usage
        stmt = sa.select(
            table.c.user, table.c.connection, table.c.budget, table.c.rows, table.c.bytes
        ).where(table.c.day == day)
        if user is not None:
            stmt = stmt.where(table.c.user == user)
        if connection is not None:
            stmt = stmt.where(table.c.connection == connection)
        with self._read() as conn:
            rows = conn.execute(stmt.order_by(table.c.user, table.c.connection, table.c.budget))
            return [(r.user, r.connection, r.budget, int(r.rows), int(r.bytes)) for r in rows]

    # ---- rate limits of sign-in attempts (migration 0007; gateway.ratelimit) -------------

    def charge_attempt(self, charges: Sequence[Charge]) -> ratelimits.Charged | Refusal:
        """Charge one attempt to each key, or to none when one is over its limit (the
        refusal names the key that waits longest)."""
        with self._write(fsync=False) as conn:
            return ratelimits.charge(conn, self._dialect, charges, self._clock())

    def refund_attempt(self, charged: ratelimits.Charged, *, clear: Iterable[Key] = ()) -> None:
        """Give a charged attempt back; `clear` forgets those keys' attempts altogether."""
        with self._write(fsync=False) as conn:
            ratelimits.refund(conn, charged.windows)
            for key in clear:
                ratelimits.clear(conn, key)

    def prune_rate_limits(self) -> list[ratelimits.Expired]:
        """Delete the counters no window reads any more; returns them (one member gets each)."""
        with self._write(fsync=False) as conn:
            return ratelimits.prune(conn, self._clock())

    # ---- SSH public keys (migration 0005; `wardgate ssh-keys`) ---------------------------

    def add_ssh_key(
        self, user: str, fingerprint: str, public_key: str, comment: str = ""
    ) -> SshKeyRecord:
        """Register a public key for ``user``; AlreadyExists if any user has it already."""
        record = SshKeyRecord(
            id=new_id(),
            user=user,
            fingerprint=fingerprint,
            public_key=public_key,
            comment=comment[:255],
            created_at=self._clock(),
        )
        try:
            with self._write() as conn:
                if (
                    conn.execute(sa.select(t.users.c.name).where(t.users.c.name == user)).first()
                    is None
                ):
                    raise NotFound(f"user {user!r} does not exist")
                conn.execute(
                    sa.insert(t.ssh_keys).values(
                        id=record.id,
                        user=record.user,
                        fingerprint=record.fingerprint,
                        public_key=record.public_key,
                        comment=record.comment,
                        created_at=record.created_at,
                    )
                )
        except sa.exc.IntegrityError as exc:
            raise AlreadyExists(f"key {fingerprint} is registered already") from exc
        return record

    def list_ssh_keys(self, user: str | None = None) -> list[SshKeyRecord]:
        stmt = sa.select(t.ssh_keys).order_by(t.ssh_keys.c.created_at)
        if user is not None:
            stmt = stmt.where(t.ssh_keys.c.user == user)
        with self._read() as conn:
            rows = conn.execute(stmt).all()
        return [_ssh_key(row) for row in rows]

    def find_ssh_key(self, fingerprint: str) -> SshKeyRecord | None:
        with self._read() as conn:
            row = conn.execute(
                sa.select(t.ssh_keys).where(t.ssh_keys.c.fingerprint == fingerprint)
            ).first()
        return None if row is None else _ssh_key(row)

    def remove_ssh_key(self, user: str, key: str) -> bool:
        """Remove ``user``'s key named by id or fingerprint; False if there was none."""
        keys = t.ssh_keys.c
        with self._write() as conn:
            result = conn.execute(
                sa.delete(t.ssh_keys).where(
                    keys.user == user, sa.or_(keys.id == key, keys.fingerprint == key)
                )
            )
        return bool(result.rowcount)


# -- engines -------------------------------------------------------------------------------


def _create_engine(url: sa.URL, options: dict[str, Any]) -> tuple[sa.Engine, bool]:
    """The engine for ``url`` and whether its calls must be serialised (in-memory SQLite)."""
    backend = url.get_backend_name()
    if backend == "postgresql":
        # Survive a database restart between calls instead of failing the next one.
        options.setdefault("pool_pre_ping", True)
        return sa.create_engine(url, **options), False
    if backend != "sqlite":
        raise ValueError(f"unsupported database URL {url!r}: use sqlite or postgresql")
    memory = url.database in (None, "", ":memory:")
    if memory:
        # Every connection to ":memory:" is a separate database; share one.
        options.setdefault("poolclass", sa.StaticPool)
        options.setdefault("connect_args", {"check_same_thread": False})
    elif url.query.get("uri") is None:
        assert url.database is not None
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    return sa.create_engine(url, **options), memory


def _sqlite_on_connect(
    sync: Literal["full", "normal"], dbapi_connection: Any, connection_record: Any
) -> None:
    # Stop pysqlite from issuing BEGIN on its own; _sqlite_on_begin does it, in the right mode.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys = ON")
        # Readers no longer block the writer, nor it them.
        _enable_wal(cursor)
        cursor.execute(f"PRAGMA synchronous = {'FULL' if sync == 'full' else 'NORMAL'}")
    finally:
        cursor.close()


def _sqlite_on_connect_read_only(dbapi_connection: Any, connection_record: Any) -> None:
    dbapi_connection.isolation_level = None  # BEGIN comes from _sqlite_on_begin
    dbapi_connection.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")


def _set_synchronous(conn: sa.Connection, level: Literal["FULL", "NORMAL"]) -> None:
    driver = conn.connection.driver_connection
    assert driver is not None  # a live pysqlite connection
    driver.execute(f"PRAGMA synchronous = {level}")


def _enable_wal(cursor: Any) -> None:
    """Switch the database to WAL once; the mode then persists in the file.

    The switch needs an exclusive lock, and SQLite does not always call the busy handler for
    it, so gateways starting together on a fresh file retry here, within the busy timeout.
    """
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    delay = 0.005
    while True:
        try:
            mode = cursor.execute("PRAGMA journal_mode").fetchone()[0]
            if str(mode).lower() != "wal":
                cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(delay)  # a lock held by another process: nothing to wait on but time
            delay = min(delay * 2, 0.2)


def _sqlite_on_begin(conn: sa.Connection) -> None:
    mode = conn.get_execution_options().get(_SQLITE_BEGIN_OPTION, "DEFERRED")
    if mode not in ("DEFERRED", "IMMEDIATE"):
        raise ValueError(f"bad SQLite BEGIN mode {mode!r}")
    conn.exec_driver_sql(f"BEGIN {mode}")


# -- validation ----------------------------------------------------------------------------


def _check_hash(value: bytes, what: str) -> None:
    # A wrong length most likely means the caller passed the secret itself, not its digest.
    if not isinstance(value, bytes) or len(value) != _HASH_SIZE:
        raise ValueError(f"{what} must be a {_HASH_SIZE}-byte sha256 digest")


def _check_aware(value: dt.datetime, what: str) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware")


def _check_sealed(value: str | None) -> None:
    if value is not None and not value.startswith("enc:"):
        raise ValueError("an IdP refresh token must be sealed before it is stored")


def _check_secret_references(conn: ConnectionRecord) -> None:
    for key, value in conn.secrets.items():
        if not value.startswith(SECRET_REFERENCE_PREFIXES):
            raise ValueError(
                f"connection {conn.name!r}: secret {key!r} must be a reference or a sealed blob "
                f"({', '.join(SECRET_REFERENCE_PREFIXES)}), never plaintext"
            )


# -- rows to records -----------------------------------------------------------------------


def _agent(row: sa.Row[Any]) -> AgentRecord:
    return AgentRecord(
        name=row.name,
        pool=row.pool,
        secret_hash=row.secret_hash,
        created_at=row.created_at,
        revoked_at=row.revoked_at,
    )


def _user(row: sa.Row[Any]) -> UserRecord:
    return _user_from(lambda c: getattr(row, c))


def _user_from(get: Callable[[str], Any]) -> UserRecord:
    return UserRecord(
        name=get("name"),
        is_admin=get("is_admin"),
        created_at=get("created_at"),
        groups=tuple(get("groups")),
        kind=get("kind"),
        disabled_at=get("disabled_at"),
        issuer=get("issuer"),
        subject=get("subject"),
        has_password=get("password_hash") is not None,
    )


def _token(row: sa.Row[Any]) -> TokenRecord:
    return _token_from(lambda c: getattr(row, c))


def _token_from(get: Callable[[str], Any]) -> TokenRecord:
    scopes = get("scopes")
    return TokenRecord(
        id=get("id"),
        user=get("user"),
        token_hash=get("token_hash"),
        created_at=get("created_at"),
        expires_at=get("expires_at"),
        revoked_at=get("revoked_at"),
        label=get("label"),
        kind=get("kind"),
        login_id=get("login_id"),
        connection=get("connection"),
        scopes=None if scopes is None else tuple(scopes),
        parent_id=get("parent_id"),
    )


def _login(row: sa.Row[Any]) -> LoginRecord:
    return _login_from(lambda c: getattr(row, c))


def _login_from(get: Callable[[str], Any]) -> LoginRecord:
    return LoginRecord(
        id=get("id"),
        user=get("user"),
        method=get("method"),
        created_at=get("created_at"),
        expires_at=get("expires_at"),
        last_seen_at=get("last_seen_at"),
        idle_timeout=get("idle_timeout"),
        revoked_at=get("revoked_at"),
        issuer=get("issuer"),
        subject=get("subject"),
        idp_refresh_token=get("idp_refresh_token"),
    )


def _connection(row: sa.Row[Any]) -> ConnectionRecord:
    return ConnectionRecord(
        name=row.name,
        type=row.type,
        pool=row.pool,
        host=row.host,
        port=row.port,
        options=dict(row.options),
        secrets=dict(row.secrets),
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _review_record(row: sa.Row[Any], votes: Iterable[sa.Row[Any]]) -> ReviewRecord:
    return ReviewRecord(
        id=row.id,
        kind=row.kind,
        status=row.status,
        requester=row.requester,
        connection=row.connection,
        text=row.text,
        reason=row.reason,
        terms=dict(row.terms),
        created_at=row.created_at,
        deadline=row.deadline,
        rules=tuple(row.rules),
        session_id=row.session_id,
        protocol=row.protocol,
        access=row.access,
        duration=row.duration,
        decided_at=row.decided_at,
        decision=row.decision,
        grant_expires_at=row.grant_expires_at,
        votes=tuple(
            VoteRecord(
                voter=v.voter,
                controllers=tuple(v.controllers),
                vote=v.vote,
                reason=v.reason,
                voted_at=v.voted_at,
                expires_at=v.expires_at,
            )
            for v in votes
        ),
    )


def _ssh_key(row: sa.Row[Any]) -> SshKeyRecord:
    return SshKeyRecord(
        id=row.id,
        user=row.user,
        fingerprint=row.fingerprint,
        public_key=row.public_key,
        comment=row.comment,
        created_at=row.created_at,
    )


def _session(row: sa.Row[Any]) -> SessionRecord:
    return SessionRecord(
        id=row.id,
        user=row.user,
        connection=row.connection,
        protocol=row.protocol,
        client_addr=row.client_addr,
        started_at=row.started_at,
        agent=row.agent,
        ended_at=row.ended_at,
        status=row.status,
        error=row.error,
        bytes_up=row.bytes_up,
        bytes_down=row.bytes_down,
        member=row.member,
    )


def _audit_event(row: sa.Row[Any]) -> AuditEvent | None:
    """The event in ``row``, or None when its data is not a JSON object."""
    try:
        data = json.loads(row.data)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    return AuditEvent(
        seq=row.seq,
        ts=row.ts,
        kind=row.kind,
        actor=row.actor,
        session_id=row.session_id,
        data=data,
        prev_hash=row.prev_hash,
        hash=row.hash,
    )


def _verifiable(rows: Iterable[sa.Row[Any]]) -> Iterator[AuditEvent]:
    for row in rows:
        event = _audit_event(row)
        if event is None:
            # append_audit never writes such data, so the event was edited: give it a hash no
            # recomputation can match and let the verifier report it.
            event = AuditEvent(
                seq=row.seq,
                ts=row.ts,
                kind=row.kind,
                actor=row.actor,
                session_id=row.session_id,
                data={},
                prev_hash=row.prev_hash,
                hash=b"",
            )
        yield event


def _policy_version(row: sa.Row[Any]) -> PolicyVersionRecord:
    return PolicyVersionRecord(
        version=row.version,
        document=row.document,
        sha256=row.sha256,
        applied_by=row.applied_by,
        applied_at=row.applied_at,
        comment=row.comment,
    )
