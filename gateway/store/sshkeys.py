"""The SSH keys repository (table ``ssh_keys``, migration 0005), reached as ``Store.ssh_keys``:
users' public keys, by fingerprint."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from gateway.store import tables as t
from gateway.store.db import AlreadyExists, Database, NotFound, new_id
from gateway.store.models import SshKeyRecord


class SshKeys:
    def __init__(self, db: Database) -> None:
        self._db = db

    def add(self, user: str, fingerprint: str, public_key: str, comment: str = "") -> SshKeyRecord:
        """Register a public key for ``user``; AlreadyExists if any user has it already."""
        record = SshKeyRecord(
            id=new_id(),
            user=user,
            fingerprint=fingerprint,
            public_key=public_key,
            comment=comment[:255],
            created_at=self._db.clock(),
        )
        try:
            with self._db.write() as conn:
                if (
                    conn.execute(sa.select(t.users.c.name).where(t.users.c.name == user)).first()
                    is None
                ):
                    raise NotFound(f"user {user!r} does not exist")
                conn.execute(
                    sa.insert(t.ssh_keys).values(
                        id=record.id,
                        user=record.user,
                        fingerprint=record.fingerprint,
                        public_key=record.public_key,
                        comment=record.comment,
                        created_at=record.created_at,
                    )
                )
        except sa.exc.IntegrityError as exc:
            raise AlreadyExists(f"key {fingerprint} is registered already") from exc
        return record

    def list_all(self, user: str | None = None) -> list[SshKeyRecord]:
        stmt = sa.select(t.ssh_keys).order_by(t.ssh_keys.c.created_at)
        if user is not None:
            stmt = stmt.where(t.ssh_keys.c.user == user)
        with self._db.read() as conn:
            rows = conn.execute(stmt).all()
        return [_ssh_key(row) for row in rows]

    def find(self, fingerprint: str) -> SshKeyRecord | None:
        with self._db.read() as conn:
            row = conn.execute(
                sa.select(t.ssh_keys).where(t.ssh_keys.c.fingerprint == fingerprint)
            ).first()
        return None if row is None else _ssh_key(row)

    def remove(self, user: str, key: str) -> bool:
        """Remove ``user``'s key named by id or fingerprint; False if there was none."""
        keys = t.ssh_keys.c
        with self._db.write() as conn:
            result = conn.execute(
                sa.delete(t.ssh_keys).where(
                    keys.user == user, sa.or_(keys.id == key, keys.fingerprint == key)
                )
            )
        return bool(result.rowcount)


def _ssh_key(row: sa.Row[Any]) -> SshKeyRecord:
    return SshKeyRecord(
        id=row.id,
        user=row.user,
        fingerprint=row.fingerprint,
        public_key=row.public_key,
        comment=row.comment,
        created_at=row.created_at,
    )
