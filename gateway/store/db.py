"""The store's database core: the engine, transactions, errors and dialect helpers that every
repository of ``gateway/store`` shares (one ``Database`` per ``Store``).

Every repository method is synchronous and runs in its own short transaction on a connection
from the engine's pool, so they can run from threads concurrently; the event loop reaches them
through ``store.io`` (``gateway/store/writer.py``).

Transactions come in two kinds:

* reads (``read``) take a plain transaction; on SQLite in WAL mode they never wait for writers;
* writes (``write``) on SQLite start with ``BEGIN IMMEDIATE``, taking the database's single write
  lock up front. A deferred transaction that reads and then writes can fail with "database is
  locked" when another writer got in between, whatever the busy timeout; an immediate one simply
  waits its turn. pysqlite would issue its own ``BEGIN`` lazily, so the engine switches that off and
  issues ``BEGIN`` itself from the ``begin`` event (SQLAlchemy's documented recipe).

Audit appends additionally lock the one-row ``audit_head`` table (``SELECT ... FOR UPDATE`` on
PostgreSQL; the SQLite write lock already covers it), so appenders in any number of threads or
gateway processes extend the chain one at a time and seqs stay gapless. The chain has one
implementation, ``audit_writer``: ``AuditLog.append`` runs it inside the call's transaction.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import postgresql, sqlite

SQLITE_BUSY_TIMEOUT_MS = 30_000
"""How long a SQLite writer waits for the write lock before giving up with "database is locked"."""

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


def unavailable(exc: sa.exc.DBAPIError) -> StoreUnavailable:
    reason = str(exc.orig or exc).strip().splitlines() or ["unknown error"]
    return StoreUnavailable(f"store unavailable: {reason[0]}")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class _Transaction(threading.local):
    conn: sa.Connection | None = None


class Database:
    """An engine with the store's transaction discipline; safe to share between threads."""

    def __init__(
        self,
        engine: sa.Engine,
        *,
        clock: Callable[[], dt.datetime] = utcnow,
        serialize: bool = False,
        sqlite_sync: Literal["full", "normal"] = "full",
        read_only: bool = False,
    ) -> None:
        """``serialize`` makes calls take turns, for engines whose threads share one
        connection."""
        self.engine = engine
        self.clock = clock
        # An in-memory SQLite database is one connection shared by every thread; it must not
        # carry two transactions at once.
        self._serial: contextlib.AbstractContextManager[Any] = (
            threading.RLock() if serialize else contextlib.nullcontext()
        )
        self._tx = _Transaction()  # the connection of this thread's `transaction`, if any
        # Writes made with fsync=False skip their own fsync when this is "full" (see _write).
        self._relaxable = engine.dialect.name == "sqlite" and sqlite_sync == "full"
        self.dialect: Literal["sqlite", "postgresql"]
        self._write_engine: sa.Engine
        self._snapshot_engine: sa.Engine
        if engine.dialect.name == "sqlite":
            if engine.dialect.driver != "pysqlite":
                raise ValueError("SQLite is supported through the standard sqlite3 driver only")
            self.dialect = "sqlite"
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
            self.dialect = "postgresql"
            self._write_engine = engine
            # READ COMMITTED gives every statement a fresh snapshot; the verifier compares the
            # head with the events and must see both as of one instant.
            self._snapshot_engine = engine.execution_options(isolation_level="REPEATABLE READ")
        else:
            raise ValueError(f"unsupported database {engine.dialect.name!r}")
        self._closed = False

    def close(self) -> None:
        self._closed = True
        self.engine.dispose()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Make every call of this thread inside the block one write transaction: all of it
        commits, or none of it. An administrator's change and its audit event (``audit.append``)
        go together this way, so a store that refuses the event refuses the change. A call that
        fails inside rolls back its own part only (a savepoint), as when it runs alone."""
        if self._tx.conn is not None:  # already inside one: the outer block commits
            yield
            return
        with self.write() as conn:  # a commit the database refuses: StoreUnavailable
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
            raise unavailable(exc) from exc

    @contextlib.contextmanager
    def read(self, *, snapshot: bool = False) -> Iterator[sa.Connection]:
        self.check_open()
        if self._tx.conn is not None:
            with self._joined(self._tx.conn) as conn:
                yield conn
            return
        engine = self._snapshot_engine if snapshot else self.engine
        try:
            with self._serial, engine.begin() as conn:
                yield conn
        except sa.exc.OperationalError as exc:
            raise unavailable(exc) from exc

    @contextlib.contextmanager
    def write(self, *, fsync: bool = True) -> Iterator[sa.Connection]:
        """A write transaction. ``fsync=False`` (SQLite): the commit is not synced on its own,
        for bookkeeping the audit log also records (session rows, budget usage). In WAL mode
        it survives a gateway crash at once, and a host power cut from the next synced commit
        on (any audit event), which syncs the one WAL file everything before it is in."""
        self.check_open()
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
            raise unavailable(exc) from exc

    def check_writable(self) -> None:
        """A write transaction that changes nothing (readiness probes): raises
        StoreUnavailable when the store would refuse writes. SQLite's BEGIN IMMEDIATE takes the
        write lock; on PostgreSQL a transaction id is assigned and committed, which a
        read-only server (a standby, a full disk's emergency mode) refuses."""
        with self.write() as conn:
            if self.dialect == "postgresql":
                conn.execute(sa.text("SELECT txid_current()"))
            else:
                conn.execute(sa.text("SELECT 1"))

    def check_open(self) -> None:
        if self._closed:
            raise StoreError("the store is closed")

    def upsert(
        self, table: sa.Table, values: Mapping[str, Any], update: Iterable[str]
    ) -> sa.Insert:
        """INSERT that updates the ``update`` columns when the primary key exists already."""
        key = [c.name for c in table.primary_key.columns]
        if self.dialect == "postgresql":
            pg = postgresql.insert(table).values(dict(values))
            return pg.on_conflict_do_update(
                index_elements=key, set_={c: pg.excluded[c] for c in update}
            )
        lite = sqlite.insert(table).values(dict(values))
        return lite.on_conflict_do_update(
            index_elements=key, set_={c: lite.excluded[c] for c in update}
        )

    def insert_ignore(self, table: sa.Table, values: Mapping[str, Any]) -> sa.Insert:
        """INSERT that does nothing when the primary key exists already."""
        if self.dialect == "postgresql":
            return postgresql.insert(table).values(dict(values)).on_conflict_do_nothing()
        return sqlite.insert(table).values(dict(values)).on_conflict_do_nothing()


# -- engines -------------------------------------------------------------------------------


def create_engine(url: sa.URL, options: dict[str, Any]) -> tuple[sa.Engine, bool]:
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


def check_hash(value: bytes, what: str) -> None:
    # A wrong length most likely means the caller passed the secret itself, not its digest.
    if not isinstance(value, bytes) or len(value) != _HASH_SIZE:
        raise ValueError(f"{what} must be a {_HASH_SIZE}-byte sha256 digest")


def check_aware(value: dt.datetime, what: str) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware")
