"""The audit log's one chain implementation: appends on raw DB-API connections.

Every statement of every session is appended here before it is forwarded, so the cost per
transaction decides the gateway's latency. Measured on this project's 2-core machine: a
SQLAlchemy Core transaction of head read + insert + head update costs ~700 us; the same
three statements on the raw sqlite3 connection cost ~10 us plus the commit (~200 us for
the WAL fsync with synchronous=FULL). So the chain is extended here, on plain SQL, for every
caller:

* `AuditWriter` commits batches on a connection of its own (the Auditor's hot path);
* `extend_chain` runs on the DB-API connection under an open SQLAlchemy transaction
  (`AuditLog.append`, the events `Store.transaction` commits together with a change), so
  an event and its change stay one atomic commit.

Appends are serialised against other writers (other threads, other gateway replicas) by the
database: the write lock taken by BEGIN IMMEDIATE on SQLite, SELECT ... FOR UPDATE of the head
row on PostgreSQL. The clock is read under that lock, so timestamps never run backwards along
the chain (unless the clock itself does).
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa

from gateway.store import chain
from gateway.store.models import AuditEvent

_INSERT = (
    "INSERT INTO audit_events (seq, ts, kind, actor, session_id, data, prev_hash, hash) "
    "VALUES ({p}, {p}, {p}, {p}, {p}, {p}, {p}, {p})"
)
_HEAD = "SELECT seq, hash FROM audit_head WHERE id = 1"
_UPDATE_HEAD = "UPDATE audit_head SET seq = {p}, hash = {p} WHERE id = 1"

Item = tuple[str, str, "str | None", Mapping[str, Any]]


class _Statements:
    """The chain's three statements in one dialect's parameter style."""

    def __init__(self, sqlite: bool) -> None:
        p = "?" if sqlite else "%s"
        self.sqlite = sqlite
        self.insert = _INSERT.format(p=p)
        self.head = _HEAD if sqlite else _HEAD + " FOR UPDATE"
        self.update = _UPDATE_HEAD.format(p=p)


_SQLITE = _Statements(sqlite=True)
_POSTGRESQL = _Statements(sqlite=False)


def _statements(dialect: str) -> _Statements:
    return _SQLITE if dialect == "sqlite" else _POSTGRESQL


def _extend(
    cur: Any, sql: _Statements, clock: Callable[[], dt.datetime], items: Sequence[Item]
) -> list[AuditEvent]:
    """Append `items` in order on `cur`, inside the caller's transaction."""
    cur.execute(sql.head)
    seq, prev_hash = cur.fetchone()
    prev_hash = bytes(prev_hash)
    ts = clock().astimezone(dt.UTC)
    # SQLite holds naive UTC text in SQLAlchemy's DATETIME format (see tables.py).
    ts_param: Any = ts.replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f") if sql.sqlite else ts
    rows = []
    events = []
    for kind, actor, session_id, data in items:
        seq += 1
        payload = chain.canonical_json(dict(data))
        # Callers pass JSON-native values, so the data reads back as given: no
        # json.loads round trip on the hot path.
        stored = dict(data)
        digest = chain.event_hash_of_payload(
            prev_hash,
            seq=seq,
            ts=ts,
            kind=kind,
            actor=actor,
            session_id=session_id,
            payload=payload,
        )
        rows.append((seq, ts_param, kind, actor, session_id, payload.decode(), prev_hash, digest))
        events.append(AuditEvent(seq, ts, kind, actor, session_id, stored, prev_hash, digest))
        prev_hash = digest
    cur.executemany(sql.insert, rows)
    cur.execute(sql.update, (seq, prev_hash))
    return events


def extend_chain(
    conn: sa.Connection, clock: Callable[[], dt.datetime], items: Sequence[Item]
) -> list[AuditEvent]:
    """Append `items` inside `conn`'s open write transaction (or savepoint): they commit or
    roll back with it. The statements run on the transaction's own DB-API connection, which
    SQLAlchemy has already begun (BEGIN IMMEDIATE on SQLite)."""
    if not items:
        return []
    cur = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    dbapi = conn.dialect.loaded_dbapi
    try:
        return _extend(cur, _statements(conn.dialect.name), clock, items)
    except dbapi.Error as exc:
        # As SQLAlchemy would have raised it, so callers of the store see one kind of error.
        raise sa.exc.DBAPIError.instance(None, None, exc, dbapi.Error) from exc
    finally:
        cur.close()


class AuditWriter:
    """Batches committed on one connection of its own, kept for the writer's lifetime; use it
    from one thread (the store's writer thread)."""

    def __init__(self, engine: sa.Engine, clock: Callable[[], dt.datetime]) -> None:
        self._engine = engine
        self._clock = clock
        self._sql = _statements(engine.dialect.name)
        self._conn: Any = None

    def _connection(self) -> Any:
        if self._conn is None:
            # A pooled DB-API connection with the store's connect-time settings (WAL,
            # busy_timeout, no implicit BEGIN on SQLite), kept for the writer's lifetime.
            self._conn = self._engine.raw_connection()
        return self._conn

    def append(self, items: Sequence[Item]) -> list[AuditEvent]:
        if not items:
            return []
        conn = self._connection()
        cur = conn.cursor()
        sqlite = self._sql.sqlite
        try:
            if sqlite:
                cur.execute("BEGIN IMMEDIATE")
            events = _extend(cur, self._sql, self._clock, items)
            if sqlite:
                cur.execute("COMMIT")
            else:
                conn.commit()
        except BaseException:
            with contextlib.suppress(Exception):  # the original error is what matters
                if sqlite:
                    cur.execute("ROLLBACK")
                else:
                    conn.rollback()
            self._discard()  # a broken connection is not reused
            raise
        finally:
            cur.close()
        return events

    def _discard(self) -> None:
        """Drop a failed connection. A PostgreSQL one leaves the pool without the reset a
        dead server connection would fail; SQLite's file connection is fine to reuse."""
        if self._sql.sqlite:
            self.close()
        elif self._conn is not None:
            conn, self._conn = self._conn, None
            with contextlib.suppress(Exception):
                conn.invalidate()

    def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            with contextlib.suppress(Exception):  # closing a broken connection may fail too
                conn.close()
