"""The audit log repository, reached as ``Store.audit``: appending to the gateway-wide hash chain
(through ``audit_writer``, its one implementation), listing and verifying it."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import sqlalchemy as sa

from gateway.store import chain
from gateway.store import tables as t
from gateway.store.audit_writer import AuditWriter, extend_chain
from gateway.store.db import Database, StoreError
from gateway.store.models import AuditEvent


class AuditLog:
    def __init__(self, db: Database) -> None:
        self._db = db

    def append(
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
        with self._db.write() as conn:
            return self.append_in(conn, kind, actor, session_id, payload)

    def writer(self) -> AuditWriter:
        """A writer for the append hot path, on its own connection; use it from one thread."""
        self._db.check_open()
        return AuditWriter(self._db.engine, self._db.clock)

    def append_in(
        self, conn: sa.Connection, kind: str, actor: str, session_id: str | None, payload: bytes
    ) -> AuditEvent:
        """One event in ``conn``'s write transaction, through the one chain implementation."""
        data = json.loads(payload)  # returned as it reads back: tuples become lists
        (event,) = extend_chain(conn, self._db.clock, [(kind, actor, session_id, data)])
        return event

    def list_all(
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
        with self._db.read() as conn:
            rows = conn.execute(stmt).all()
        events: list[AuditEvent] = []
        for row in rows:
            event = _audit_event(row)
            if event is None:
                raise StoreError(f"audit event {row.seq} has unreadable data")
            events.append(event)
        return events

    def verify(self) -> int | None:
        """None if the chain is intact, else the seq of the first event that does not verify."""
        return self.check().first_bad_seq

    def check(self) -> chain.ChainCheck:
        """Verify the chain: how many events were checked, where and how it first breaks.

        Edited, removed or reordered events are found, removals at the end too (through the
        head row). This proves integrity against casual edits, not against someone who rewrites
        the whole chain and the head: anchor ``audit_head`` elsewhere for that.
        """
        with self._db.read(snapshot=True) as conn:
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
            # `append` never writes such data, so the event was edited: give it a hash no
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
