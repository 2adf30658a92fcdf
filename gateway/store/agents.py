"""The agents repository (table ``agents``), reached as ``Store.agents``: registered agents and
their secret digests. Names are never reused."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from gateway.store import tables as t
from gateway.store.db import AlreadyExists, Database, NotFound, check_hash
from gateway.store.models import AgentRecord


class Agents:
    def __init__(self, db: Database) -> None:
        self._db = db

    def create(self, name: str, pool: str, secret_hash: bytes) -> AgentRecord:
        """Register an agent. Names are never reused, so a revoked name stays taken."""
        check_hash(secret_hash, "secret_hash")
        stmt = (
            sa.insert(t.agents)
            .values(name=name, pool=pool, secret_hash=secret_hash, created_at=self._db.clock())
            .returning(*t.agents.c)
        )
        try:
            with self._db.write() as conn:
                row = conn.execute(stmt).one()
        except sa.exc.IntegrityError as exc:
            raise AlreadyExists(f"agent {name!r} exists already") from exc
        return _agent(row)

    def get(self, name: str) -> AgentRecord | None:
        with self._db.read() as conn:
            row = conn.execute(sa.select(t.agents).where(t.agents.c.name == name)).first()
        return None if row is None else _agent(row)

    def list_all(self) -> list[AgentRecord]:
        with self._db.read() as conn:
            rows = conn.execute(sa.select(t.agents).order_by(t.agents.c.name)).all()
        return [_agent(row) for row in rows]

    def revoke(self, name: str) -> AgentRecord:
        """Revoke an agent; revoking twice keeps the first revocation time."""
        with self._db.write() as conn:
            conn.execute(
                sa.update(t.agents)
                .where(t.agents.c.name == name, t.agents.c.revoked_at.is_(None))
                .values(revoked_at=self._db.clock())
            )
            row = conn.execute(sa.select(t.agents).where(t.agents.c.name == name)).first()
        if row is None:
            raise NotFound(f"no agent {name!r}")
        return _agent(row)

    def rotate_secret(self, name: str, secret_hash: bytes) -> AgentRecord:
        """Replace an agent's secret hash; a revoked agent becomes valid again."""
        check_hash(secret_hash, "secret_hash")
        with self._db.write() as conn:
            row = conn.execute(
                sa.update(t.agents)
                .where(t.agents.c.name == name)
                .values(secret_hash=secret_hash, revoked_at=None)
                .returning(*t.agents.c)
            ).first()
        if row is None:
            raise NotFound(f"no agent {name!r}")
        return _agent(row)


def _agent(row: sa.Row[Any]) -> AgentRecord:
    return AgentRecord(
        name=row.name,
        pool=row.pool,
        secret_hash=row.secret_hash,
        created_at=row.created_at,
        revoked_at=row.revoked_at,
    )
