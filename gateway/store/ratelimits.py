"""The rate-limit counters' queries (table ``rate_limits``), run by ``Store`` in its transactions.

An attempt's keys are charged in one transaction, in a fixed order (kind, digest): on
PostgreSQL the upsert locks each key's current row until commit, so members charging the
same key take turns, and the fixed order keeps two attempts that share keys from waiting on
each other in a cycle. The arithmetic is ``gateway.ratelimit``'s.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from gateway.ratelimit import Charge, Key, Refusal, over, retry_after, window_start
from gateway.store import tables as t
from gateway.store.db import Database

Dialect = Literal["sqlite", "postgresql"]


@dataclass(frozen=True, slots=True)
class Charged:
    """Where an attempt was charged: each key's window, for a refund."""

    windows: tuple[tuple[Key, dt.datetime], ...]


@dataclass(frozen=True, slots=True)
class Expired:
    """A pruned counter, for the audit log's summary of what its window refused."""

    kind: str
    label: str
    window_start: dt.datetime
    attempts: int
    refused: int


def charge(
    conn: sa.Connection, dialect: Dialect, charges: Sequence[Charge], now: dt.datetime
) -> Charged | Refusal:
    table = t.rate_limits
    ordered = sorted(charges, key=lambda c: (c.key.kind, c.key.digest))
    counted: list[tuple[Charge, dt.datetime, int, int, float]] = []
    for c in ordered:
        start = window_start(now, c.rule.window)
        window = dt.timedelta(seconds=c.rule.window)
        values = {
            "kind": c.key.kind,
            "key": c.key.digest,
            "window_start": start,
            "label": c.key.label,
            "attempts": 1,
            "refused": 0,
            "expires_at": start + 2 * window,
        }
        insert = (
            postgresql.insert(table).values(values)
            if dialect == "postgresql"
            else sqlite.insert(table).values(values)
        )
        upsert = insert.on_conflict_do_update(
            index_elements=["kind", "key", "window_start"],
            set_={"attempts": table.c.attempts + 1},
        ).returning(table.c.attempts)
        current = int(conn.execute(upsert).scalar_one())
        previous = conn.execute(
            sa.select(table.c.attempts).where(
                table.c.kind == c.key.kind,
                table.c.key == c.key.digest,
                table.c.window_start == start - window,
            )
        ).scalar_one_or_none()
        elapsed = (now - start).total_seconds()
        counted.append((c, start, int(previous or 0), current, elapsed))
    refusing = {id(c) for c, _, prev, cur, elapsed in counted if over(prev, cur, elapsed, c.rule)}
    if not refusing:
        return Charged(tuple((c.key, start) for c, start, *_ in counted))
    refusals: list[Refusal] = []
    for c, start, previous, current, elapsed in counted:
        refused = id(c) in refusing
        change: dict[str, sa.ColumnElement[int]] = {"attempts": table.c.attempts - 1}
        if refused:
            change["refused"] = table.c.refused + 1
        stmt = sa.update(table).where(_row(c.key, start)).values(change).returning(table.c.refused)
        total = int(conn.execute(stmt).scalar_one())
        if refused:
            wait = retry_after(previous, current - 1, elapsed, c.rule)
            refusals.append(Refusal(c.key, c.rule, wait, first=total == 1))
    return max(refusals, key=lambda r: r.retry_after)


def refund(conn: sa.Connection, keys: Sequence[tuple[Key, dt.datetime]]) -> None:
    table = t.rate_limits
    for key, start in sorted(keys, key=lambda k: (k[0].kind, k[0].digest)):
        conn.execute(
            sa.update(table)
            .where(_row(key, start), table.c.attempts > 0)
            .values(attempts=table.c.attempts - 1)
        )


def clear_key(conn: sa.Connection, key: Key) -> None:
    """Forget `key`'s attempts (a success of its identity); what it refused stays counted."""
    table = t.rate_limits
    conn.execute(
        sa.update(table)
        .where(table.c.kind == key.kind, table.c.key == key.digest, table.c.attempts > 0)
        .values(attempts=0)
    )


def prune(conn: sa.Connection, now: dt.datetime) -> list[Expired]:
    table = t.rate_limits
    stmt = (
        sa.delete(table)
        .where(table.c.expires_at < now)
        .returning(
            table.c.kind, table.c.label, table.c.window_start, table.c.attempts, table.c.refused
        )
    )
    return [
        Expired(r.kind, r.label, r.window_start, int(r.attempts), int(r.refused))
        for r in conn.execute(stmt)
    ]


def _row(key: Key, start: dt.datetime) -> sa.ColumnElement[bool]:
    table = t.rate_limits
    return sa.and_(
        table.c.kind == key.kind, table.c.key == key.digest, table.c.window_start == start
    )


class RateLimits:
    """The rate limits repository, reached as ``Store.rate_limits``."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def charge(self, charges: Sequence[Charge]) -> Charged | Refusal:
        """Charge one attempt to each key, or to none when one is over its limit (the
        refusal names the key that waits longest)."""
        with self._db.write(fsync=False) as conn:
            return charge(conn, self._db.dialect, charges, self._db.clock())

    def refund(self, charged: Charged, *, clear: Iterable[Key] = ()) -> None:
        """Give a charged attempt back; `clear` forgets those keys' attempts altogether."""
        with self._db.write(fsync=False) as conn:
            refund(conn, charged.windows)
            for key in clear:
                clear_key(conn, key)

    def prune(self) -> list[Expired]:
        """Delete the counters no window reads any more; returns them (one member gets each)."""
        with self._db.write(fsync=False) as conn:
            return prune(conn, self._db.clock())
