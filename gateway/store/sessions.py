"""The sessions repository (table ``sessions``), reached as ``Store.sessions``: who reached what,
through which agent and member, and how it ended (the first end wins)."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from gateway.store import tables as t
from gateway.store.db import AlreadyExists, Database, NotFound, check_aware
from gateway.store.models import SessionRecord

ENDED_SESSION_STATUSES = frozenset({"closed", "failed"})


@dataclass(frozen=True, slots=True)
class EventMatch:
    """Sessions with at least one audit event of one of `kinds` whose data holds `text` (a
    string value's text, e.g. part of a statement), holds the raw JSON `fragment` and none of
    the raw JSON fragments `lacks` (the data is stored as canonical JSON: sorted keys, no
    spaces, so `"masked":[` finds a result with masking counts). `or_status` also keeps the
    sessions that ended with that status."""

    kinds: tuple[str, ...]
    text: str | None = None
    fragment: str | None = None
    lacks: tuple[str, ...] = ()
    or_status: str | None = None


def _like(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)[1:-1]  # as the stored JSON escapes it


class Sessions:
    def __init__(self, db: Database) -> None:
        self._db = db

    def create(self, rec: SessionRecord) -> None:
        check_aware(rec.started_at, "started_at")
        if rec.ended_at is not None:
            check_aware(rec.ended_at, "ended_at")
        try:
            with self._db.write(fsync=False) as conn:
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

    def end(
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
            check_aware(ended_at, "ended_at")
        values: dict[str, Any] = {
            "status": status,
            "error": error,
            "bytes_up": bytes_up,
            "bytes_down": bytes_down,
            "ended_at": ended_at or self._db.clock(),
        }
        if agent is not None:
            values["agent"] = agent
        with self._db.write(fsync=False) as conn:
            conn.execute(
                sa.update(t.sessions)
                .where(t.sessions.c.id == session_id, t.sessions.c.ended_at.is_(None))
                .values(**values)
            )
            exists = conn.execute(sa.select(t.sessions.c.id).where(t.sessions.c.id == session_id))
            if exists.first() is None:
                raise NotFound(f"no session {session_id!r}")

    def get(self, session_id: str) -> SessionRecord | None:
        with self._db.read() as conn:
            row = conn.execute(sa.select(t.sessions).where(t.sessions.c.id == session_id)).first()
        return None if row is None else _session(row)

    def list_all(
        self,
        *,
        user: str | None = None,
        connection: str | None = None,
        since: dt.datetime | None = None,
        before: tuple[dt.datetime, str] | None = None,
        limit: int = 100,
        protocol: str | None = None,
        until: dt.datetime | None = None,
        having: Sequence[Sequence[EventMatch]] = (),
    ) -> list[SessionRecord]:
        """Sessions newest first; ``since`` keeps those started at or after it, ``until``
        those started before it, ``before`` those after the (started_at, id) of the last row
        of a previous page (keyset paging: sessions that start meanwhile shift no page);
        ``having`` keeps those that pass every group of it: a group passes when one of its
        matches does."""
        stmt = sa.select(t.sessions)
        for alternatives in having:
            stmt = stmt.where(sa.or_(*(_matching(m) for m in alternatives)))
        if before is not None:
            check_aware(before[0], "before")
            at, session_id = before
            stmt = stmt.where(
                (t.sessions.c.started_at < at)
                | ((t.sessions.c.started_at == at) & (t.sessions.c.id < session_id))
            )
        if user is not None:
            stmt = stmt.where(t.sessions.c.user == user)
        if connection is not None:
            stmt = stmt.where(t.sessions.c.connection == connection)
        if protocol is not None:
            stmt = stmt.where(t.sessions.c.protocol == protocol)
        if since is not None:
            check_aware(since, "since")
            stmt = stmt.where(t.sessions.c.started_at >= since)
        if until is not None:
            check_aware(until, "until")
            stmt = stmt.where(t.sessions.c.started_at < until)
        stmt = stmt.order_by(t.sessions.c.started_at.desc(), t.sessions.c.id.desc()).limit(limit)
        with self._db.read() as conn:
            rows = conn.execute(stmt).all()
        return [_session(row) for row in rows]


def _matching(match: EventMatch) -> sa.ColumnElement[bool]:
    ev = t.audit_events.c
    found = sa.select(ev.session_id).where(ev.kind.in_(match.kinds))
    if match.text:
        found = found.where(ev.data.contains(_like(match.text), autoescape=True))
    if match.fragment:
        found = found.where(ev.data.contains(match.fragment, autoescape=True))
    for lack in match.lacks:
        found = found.where(~ev.data.contains(lack, autoescape=True))
    keep: sa.ColumnElement[bool] = t.sessions.c.id.in_(found)
    if match.or_status is not None:
        keep = keep | (t.sessions.c.status == match.or_status)
    return keep


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
