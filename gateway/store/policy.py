"""The policy repository, reached as ``Store.policy``: policy versions (migration 0004) and the
exfiltration budgets' daily usage."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from gateway.store import tables as t
from gateway.store.db import Database
from gateway.store.models import PolicyVersionRecord

_POLICY_LOCK_KEY = 0x57617265  # serialises policy version numbering across gateways


class Policy:
    def __init__(self, db: Database) -> None:
        self._db = db

    def latest_version(self) -> int:
        """The number of the newest policy version, 0 when none: cheap enough per session."""
        with self._db.read() as conn:
            value = conn.execute(sa.select(sa.func.max(t.policy_versions.c.version))).scalar()
        return int(value or 0)

    def get_version(self, version: int | None = None) -> PolicyVersionRecord | None:
        """Version `version`, or the newest when None."""
        stmt = sa.select(t.policy_versions)
        if version is None:
            stmt = stmt.order_by(t.policy_versions.c.version.desc()).limit(1)
        else:
            stmt = stmt.where(t.policy_versions.c.version == version)
        with self._db.read() as conn:
            row = conn.execute(stmt).first()
        return None if row is None else _policy_version(row)

    def list_versions(self) -> list[PolicyVersionRecord]:
        with self._db.read() as conn:
            rows = conn.execute(
                sa.select(t.policy_versions).order_by(t.policy_versions.c.version)
            ).all()
        return [_policy_version(row) for row in rows]

    def add_version(
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
        with self._db.write() as conn:
            if self._db.dialect == "postgresql":
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
                applied_at=self._db.clock(),
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
        now = self._db.clock()
        totals: dict[tuple[dt.date, str], tuple[int, int]] = {}
        table = t.budget_usage
        with self._db.write(fsync=False) as conn:
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
                    if self._db.dialect == "postgresql"
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
        with self._db.read() as conn:
            rows = conn.execute(stmt.order_by(table.c.user, table.c.connection, table.c.budget))
            return [(r.user, r.connection, r.budget, int(r.rows), int(r.bytes)) for r in rows]


def _policy_version(row: sa.Row[Any]) -> PolicyVersionRecord:
    return PolicyVersionRecord(
        version=row.version,
        document=row.document,
        sha256=row.sha256,
        applied_by=row.applied_by,
        applied_at=row.applied_at,
        comment=row.comment,
    )
