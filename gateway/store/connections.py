"""The connections repository (table ``connections``), reached as ``Store.connections``: what
agents may reach. Secrets are stored only as references or sealed blobs."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from gateway.store import tables as t
from gateway.store.db import Database
from gateway.store.models import ConnectionRecord

SECRET_REFERENCE_PREFIXES = ("env:", "file:", "enc:")
"""What a connection secret may look like in the store: a reference or a sealed blob."""


class Connections:
    def __init__(self, db: Database) -> None:
        self._db = db

    def upsert(self, conn: ConnectionRecord) -> tuple[ConnectionRecord, bool]:
        """Create or replace a connection; the flag is False when nothing changed.

        The record's own timestamps are ignored: the store sets ``created_at`` once and moves
        ``updated_at`` only on a real change, so applying the same file twice is a no-op.
        """
        _check_secret_references(conn)
        fields: dict[str, Any] = {
            "type": conn.type,
            "pool": conn.pool,
            "host": conn.host,
            "port": conn.port,
            "options": dict(conn.options),
            "secrets": dict(conn.secrets),
        }
        locked = sa.select(t.connections).where(t.connections.c.name == conn.name).with_for_update()
        now = self._db.clock()
        with self._db.write() as db:
            row = db.execute(locked).first()
            if row is None:
                created = db.execute(
                    self._db.insert_ignore(
                        t.connections,
                        {"name": conn.name, **fields, "created_at": now, "updated_at": now},
                    ).returning(*t.connections.c)
                ).first()
                if created is not None:
                    return _connection(created), True
                # On PostgreSQL a concurrent upsert inserted the row after our SELECT; under
                # READ COMMITTED the next statement sees it, so lock it and compare as usual.
                row = db.execute(locked).one()
            current = _connection(row)
            if all(getattr(current, key) == value for key, value in fields.items()):
                return current, False
            updated = db.execute(
                sa.update(t.connections)
                .where(t.connections.c.name == conn.name)
                .values(**fields, updated_at=now)
                .returning(*t.connections.c)
            ).one()
        return _connection(updated), True

    def get(self, name: str) -> ConnectionRecord | None:
        with self._db.read() as conn:
            row = conn.execute(sa.select(t.connections).where(t.connections.c.name == name)).first()
        return None if row is None else _connection(row)

    def list_all(self) -> list[ConnectionRecord]:
        with self._db.read() as conn:
            rows = conn.execute(sa.select(t.connections).order_by(t.connections.c.name)).all()
        return [_connection(row) for row in rows]

    def delete(self, name: str) -> bool:
        """Delete a connection; False if there was none. Its past sessions are kept."""
        with self._db.write() as conn:
            result = conn.execute(sa.delete(t.connections).where(t.connections.c.name == name))
        return result.rowcount > 0


def _connection(row: sa.Row[Any]) -> ConnectionRecord:
    return ConnectionRecord(
        name=row.name,
        type=row.type,
        pool=row.pool,
        host=row.host,
        port=row.port,
        options=dict(row.options),
        secrets=dict(row.secrets),
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _check_secret_references(conn: ConnectionRecord) -> None:
    for key, value in conn.secrets.items():
        if not value.startswith(SECRET_REFERENCE_PREFIXES):
            raise ValueError(
                f"connection {conn.name!r}: secret {key!r} must be a reference or a sealed blob "
                f"({', '.join(SECRET_REFERENCE_PREFIXES)}), never plaintext"
            )
