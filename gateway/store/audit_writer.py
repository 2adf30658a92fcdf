"""The audit log's hot path: appends through one raw DB-API connection.

Every statement of every session is appended here before it is forwarded, so the cost per
transaction decides the gateway's latency. Measured on this project's 2-core machine: a
SQLAlchemy Core transaction of head read + insert + head update costs ~700 us; the same
three statements on the raw sqlite3 connection cost ~10 us plus the commit (~200 us for
the WAL fsync with synchronous=FULL). So the chain logic is written once more here, on
plain SQL, and `tests/gateway/test_store.py` checks both paths produce one chain.

One `AuditWriter` owns one connection and must be used from one thread (the Auditor's
dedicated writer thread). Appends are serialised against other writers (other threads, other
gateway replicas) by the same locks as `Store.append_audit`: BEGIN IMMEDIATE on SQLite,
SELECT ... FOR UPDATE of the head row on PostgreSQL.
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


class AuditWriter:
    def __init__(self, engine: sa.Engine, clock: Callable[[], dt.datetime]) -> None:
        self._engine = engine
        self._clock = clock
        self._sqlite = engine.dialect.name == "sqlite"
        p = "?" if self._sqlite else "%s"
        self._insert = _INSERT.format(p=p)
        self._head = _HEAD if self._sqlite else _HEAD + " FOR UPDATE"
        self._update = _UPDATE_HEAD.format(p=p)
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
        try:
            if self._sqlite:
                cur.execute("BEGIN IMMEDIATE")
            cur.execute(self._head)
            seq, prev_hash = cur.fetchone()
            prev_hash = bytes(prev_hash)
            ts = self._clock().astimezone(dt.UTC)
            # SQLite holds naive UTC text in SQLAlchemy's DATETIME format (see tables.py).
            ts_param: Any = (
                ts.replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f") if self._sqlite else ts
            )
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
                rows.append(
                    (seq, ts_param, kind, actor, session_id, payload.decode(), prev_hash, digest)
                )
                events.append(
                    AuditEvent(seq, ts, kind, actor, session_id, stored, prev_hash, digest)
                )
                prev_hash = digest
            cur.executemany(self._insert, rows)
            cur.execute(self._update, (seq, prev_hash))
            if self._sqlite:
                cur.execute("COMMIT")
            else:
                conn.commit()
        except BaseException:
            with contextlib.suppress(Exception):  # the original error is what matters
                if self._sqlite:
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
        if self._sqlite:
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
