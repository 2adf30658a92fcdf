"""The fleet's repository: gateway members (table ``members``) and the fleet's identity
(table ``fleet_identity``), reached as ``Store.members``.

Every gateway process registers as a member when it starts and moves its ``heartbeat_at``
forward every few seconds (``gateway/fleet/membership.py`` names the figures). Any live member reaps
the members whose heartbeat is older than the bound: in one transaction it marks them gone,
ends their open sessions (failed, "gateway lost") and appends the audit events saying so.
On PostgreSQL the reaping ``UPDATE ... WHERE gone_at IS NULL`` takes each member's row lock,
so two reapers racing close a lost member's sessions once: the second re-reads the row after
the first commits and finds it gone already.

Times are the database's clock on PostgreSQL (``now()``): members whose clocks disagree
still agree on who is late. SQLite is one host's store, read with the store's clock.

The identity items are created once, by the first member to start (insert-if-absent: a
member that loses the race reads the winner's), sealed with the fleet's ``secret_key``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from gateway.store import chain
from gateway.store import tables as t

GATEWAY_LOST = "gateway lost"  # the error of a session whose member was reaped
GATEWAY_STOPPED = "gateway stopped"  # of one its member left open when it stopped
HEARTBEAT_LOST = "heartbeat lost"  # why a reaped member is gone
STOPPED = "stopped"  # why a member that left cleanly is gone

Dialect = Literal["sqlite", "postgresql"]
_Tx = Callable[[], contextlib.AbstractContextManager[sa.Connection]]
_Append = Callable[[sa.Connection, str, str, "str | None", bytes], Any]


@dataclass(frozen=True, slots=True)
class MemberRecord:
    id: str
    agent_address: str  # HOST:PORT agents dial
    public_address: str  # HOST:PORT clients dial
    version: str
    started_at: dt.datetime
    heartbeat_at: dt.datetime
    gone_at: dt.datetime | None = None
    gone_reason: str | None = None

    @property
    def live(self) -> bool:
        return self.gone_at is None


@dataclass(frozen=True, slots=True)
class Reaped:
    """A member found lost, and the sessions it served that were ended for it."""

    member: str
    heartbeat_at: dt.datetime  # its last heartbeat
    sessions: tuple[str, ...]


class Members:
    """The fleet's queries, each in one transaction of the store's."""

    def __init__(
        self,
        read: _Tx,
        write: _Tx,
        append_audit: _Append,
        dialect: Dialect,
        clock: Callable[[], dt.datetime],
    ) -> None:
        self._read = read
        self._write = write
        self._append = append_audit
        self._dialect = dialect
        self._clock = clock

    def _now(self, conn: sa.Connection) -> dt.datetime:
        if self._dialect == "postgresql":
            value = conn.execute(sa.select(sa.func.now())).scalar_one()
            assert isinstance(value, dt.datetime)
            return value.astimezone(dt.UTC)
        return self._clock()

    # -- members -------------------------------------------------------------------------

    def register(
        self, member_id: str, *, agent_address: str, public_address: str, version: str
    ) -> MemberRecord:
        """Join the fleet (again, for a member that was reaped while it still ran)."""
        with self._write() as conn:
            now = self._now(conn)
            values = {
                "id": member_id,
                "agent_address": agent_address,
                "public_address": public_address,
                "version": version,
                "started_at": now,
                "heartbeat_at": now,
                "gone_at": None,
                "gone_reason": None,
            }
            update = {k: v for k, v in values.items() if k not in ("id", "started_at")}
            insert = (
                postgresql.insert(t.members)
                if self._dialect == "postgresql"
                else sqlite.insert(t.members)
            )
            conn.execute(
                insert.values(values).on_conflict_do_update(index_elements=["id"], set_=update)
            )
            row = conn.execute(sa.select(t.members).where(t.members.c.id == member_id)).one()
        return _member(row)

    def heartbeat(self, member_id: str) -> bool:
        """Say this member lives; False when it was reaped meanwhile (its sessions were
        recorded as lost: it must end them and register again)."""
        with self._write() as conn:
            done = conn.execute(
                sa.update(t.members)
                .where(t.members.c.id == member_id, t.members.c.gone_at.is_(None))
                .values(heartbeat_at=self._now(conn))
            )
        return done.rowcount == 1

    def leave(self, member_id: str) -> tuple[str, ...]:
        """A member's clean stop: gone at once, nobody waits for its heartbeat to age. Its
        sessions should have ended by now; any still open end here ("gateway stopped"),
        since no member reaps a member that left. Returns those."""
        with self._write() as conn:
            now = self._now(conn)
            left = conn.execute(
                sa.update(t.members)
                .where(t.members.c.id == member_id, t.members.c.gone_at.is_(None))
                .values(gone_at=now, gone_reason=STOPPED)
            )
            if left.rowcount == 0:  # reaped already, with its sessions
                return ()
            return self._end_sessions(conn, member_id, now, GATEWAY_STOPPED, by=member_id)

    def reap(self, timeout: float, *, by: str, forget_after: float = 86_400.0) -> list[Reaped]:
        """Mark gone the members silent for more than `timeout` seconds, end the sessions
        they served and audit both, in one transaction; forget members gone for more than
        `forget_after` seconds. Returns what this call reaped (a racing reaper gets none)."""
        reaped: list[Reaped] = []
        with self._write() as conn:
            now = self._now(conn)
            lost = conn.execute(
                sa.update(t.members)
                .where(
                    t.members.c.gone_at.is_(None),
                    t.members.c.heartbeat_at < now - dt.timedelta(seconds=timeout),
                )
                .values(gone_at=now, gone_reason=HEARTBEAT_LOST)
                .returning(t.members.c.id, t.members.c.heartbeat_at)
            ).all()
            for member_id, heartbeat_at in sorted(lost):
                ended = self._end_sessions(conn, member_id, now, GATEWAY_LOST, by=by)
                self._audit(
                    conn,
                    "member.lost",
                    None,
                    {
                        "member": member_id,
                        "heartbeat_at": heartbeat_at.isoformat(),
                        "sessions": len(ended),
                        "by": by,
                    },
                )
                reaped.append(Reaped(member_id, heartbeat_at, ended))
            conn.execute(
                sa.delete(t.members).where(
                    t.members.c.gone_at < now - dt.timedelta(seconds=forget_after)
                )
            )
        return reaped

    def _end_sessions(
        self, conn: sa.Connection, member_id: str, now: dt.datetime, error: str, *, by: str
    ) -> tuple[str, ...]:
        """End the member's open sessions as failed with `error`, each audited."""
        ended = conn.execute(
            sa.update(t.sessions)
            .where(t.sessions.c.member == member_id, t.sessions.c.ended_at.is_(None))
            .values(ended_at=now, status="failed", error=error)
            .returning(t.sessions.c.id, t.sessions.c.user)
        ).all()
        for session_id, user in sorted(ended):
            self._audit(
                conn,
                "session.close",
                session_id,
                {"error": error, "member": member_id, "by": by},
                actor=user,
            )
        return tuple(sorted(s for s, _ in ended))

    def _audit(
        self,
        conn: sa.Connection,
        kind: str,
        session_id: str | None,
        data: Mapping[str, Any],
        *,
        actor: str = "-",
    ) -> None:
        self._append(conn, kind, actor, session_id, chain.canonical_json(dict(data)))

    def list_all(self) -> list[MemberRecord]:
        """Every member the store remembers, live ones first, oldest first."""
        with self._read() as conn:
            rows = conn.execute(
                sa.select(t.members).order_by(
                    t.members.c.gone_at.is_not(None), t.members.c.started_at, t.members.c.id
                )
            ).all()
        return [_member(r) for r in rows]

    # -- the fleet's identity --------------------------------------------------------------

    def identity(self, name: str) -> str | None:
        """The sealed identity item `name`, or None before the first member created it."""
        with self._read() as conn:
            found = conn.execute(
                sa.select(t.fleet_identity.c.sealed).where(t.fleet_identity.c.name == name)
            ).scalar_one_or_none()
        return None if found is None else str(found)

    def offer_identity(self, name: str, sealed: str, *, by: str) -> str:
        """Keep `sealed` as item `name` unless one is kept already; returns the kept one."""
        with self._write() as conn:
            values = {
                "name": name,
                "sealed": sealed,
                "created_by": by,
                "created_at": self._now(conn),
            }
            insert = (
                postgresql.insert(t.fleet_identity)
                if self._dialect == "postgresql"
                else sqlite.insert(t.fleet_identity)
            )
            conn.execute(insert.values(values).on_conflict_do_nothing())
            kept = conn.execute(
                sa.select(t.fleet_identity.c.sealed).where(t.fleet_identity.c.name == name)
            ).scalar_one()
        return str(kept)


def _member(row: sa.Row[Any]) -> MemberRecord:
    return MemberRecord(
        id=row.id,
        agent_address=row.agent_address,
        public_address=row.public_address,
        version=row.version,
        started_at=row.started_at,
        heartbeat_at=row.heartbeat_at,
        gone_at=row.gone_at,
        gone_reason=row.gone_reason,
    )
