"""The web console's sign-ins (table ``console_sessions``), reached as ``Store.console``.

A console session rides on a sign-in (``logins``): revoking the sign-in (`wardgate logout`,
a disabled user, an expired login) ends it too, because every lookup returns the login with
it and the caller checks both. Only the SHA-256 of the browser's cookie is kept.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import sqlalchemy as sa

from gateway.store import tables as t
from gateway.store.db import Database, new_id
from gateway.store.identity import _login, _user
from gateway.store.models import LoginRecord, UserRecord


@dataclass(frozen=True, slots=True)
class ConsoleSessionRecord:
    id: str  # public, safe to log (never the cookie)
    user: str
    login_id: str
    created_at: dt.datetime
    last_seen_at: dt.datetime
    idle_timeout: int  # seconds
    revoked_at: dt.datetime | None = None

    def valid_at(self, now: dt.datetime) -> bool:
        idle = now - self.last_seen_at >= dt.timedelta(seconds=self.idle_timeout)
        return self.revoked_at is None and not idle


class ConsoleSessions:
    def __init__(self, db: Database) -> None:
        self._db = db

    def create(
        self, id_hash: bytes, user: str, login_id: str, *, idle_timeout: int
    ) -> ConsoleSessionRecord:
        now = self._db.clock()
        record = ConsoleSessionRecord(
            id=new_id(16),
            user=user,
            login_id=login_id,
            created_at=now,
            last_seen_at=now,
            idle_timeout=idle_timeout,
        )
        with self._db.write() as conn:
            conn.execute(
                sa.insert(t.console_sessions).values(
                    id=record.id,
                    id_hash=id_hash,
                    user=user,
                    login_id=login_id,
                    created_at=now,
                    last_seen_at=now,
                    idle_timeout=idle_timeout,
                )
            )
        return record

    def find(
        self, id_hash: bytes
    ) -> tuple[ConsoleSessionRecord, UserRecord, LoginRecord | None] | None:
        """The session with this hash, its user and its sign-in, whatever their validity."""
        cs = t.console_sessions
        with self._db.read() as conn:
            row = conn.execute(sa.select(cs).where(cs.c.id_hash == id_hash)).first()
            if row is None:
                return None
            user = conn.execute(sa.select(t.users).where(t.users.c.name == row.user)).first()
            login = conn.execute(sa.select(t.logins).where(t.logins.c.id == row.login_id)).first()
        if user is None:
            return None
        record = ConsoleSessionRecord(
            id=row.id,
            user=row.user,
            login_id=row.login_id,
            created_at=row.created_at,
            last_seen_at=row.last_seen_at,
            idle_timeout=row.idle_timeout,
            revoked_at=row.revoked_at,
        )
        return record, _user(user), None if login is None else _login(login)

    def touch(self, session_id: str, *, min_interval: float = 0.0) -> None:
        """Move the idle clock, unless it moved less than ``min_interval`` s ago."""
        now = self._db.clock()
        cs = t.console_sessions
        with self._db.write(fsync=False) as conn:
            conn.execute(
                sa.update(cs)
                .where(
                    cs.c.id == session_id,
                    cs.c.last_seen_at <= now - dt.timedelta(seconds=min_interval),
                )
                .values(last_seen_at=now)
            )

    def revoke(self, session_id: str) -> None:
        cs = t.console_sessions
        with self._db.write() as conn:
            conn.execute(
                sa.update(cs)
                .where(cs.c.id == session_id, cs.c.revoked_at.is_(None))
                .values(revoked_at=self._db.clock())
            )

    def prune(self, before: dt.datetime) -> int:
        """Forget sessions unused since `before` (long idle or revoked: they open nothing)."""
        cs = t.console_sessions
        with self._db.write(fsync=False) as conn:
            done = conn.execute(sa.delete(cs).where(cs.c.last_seen_at < before))
        return int(done.rowcount or 0)
