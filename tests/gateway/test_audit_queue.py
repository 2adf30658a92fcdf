"""Events queued together are written in order, in one commit, on a real SQLite store."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.audit import Auditor, AuditUnavailable, durable
from gateway.store import Store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store.open(f"sqlite:///{tmp_path / 'wg.db'}")
    try:
        yield store
    finally:
        store.close()


async def test_queued_events_are_durable_in_call_order(store: Store) -> None:
    auditor = Auditor(store)
    try:
        queued = [auditor.queue("pg.statement", actor="ann", text=f"select {n}") for n in range(3)]
        events = await durable(queued)
    finally:
        await auditor.aclose()
    assert [e.seq for e in events] == [1, 2, 3]
    assert [e.data["text"] for e in events] == ["select 0", "select 1", "select 2"]
    assert [e.seq for e in store.list_audit()] == [1, 2, 3]
    assert store.verify_audit() is None


async def test_a_failed_write_fails_every_queued_event(store: Store, tmp_path: Path) -> None:
    auditor = Auditor(store)
    with contextlib.closing(sqlite3.connect(tmp_path / "wg.db")) as db:
        db.execute("DROP TABLE audit_events")  # every append now fails in the database
    try:
        queued = [auditor.queue("pg.statement", actor="ann", text=f"select {n}") for n in range(3)]
        with pytest.raises(AuditUnavailable):
            await durable(queued)
        assert all(isinstance(f.exception(), AuditUnavailable) for f in queued)
    finally:
        await auditor.aclose()
