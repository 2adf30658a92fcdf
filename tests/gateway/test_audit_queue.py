"""Events queued together are written in order, in one commit, on a real SQLite store."""

from __future__ import annotations

import asyncio
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
    assert [e.seq for e in store.audit.list_all()] == [1, 2, 3]
    assert store.audit.verify() is None


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


def _rename(path: Path, old: str, new: str) -> None:
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute(f"ALTER TABLE {old} RENAME TO {new}")


async def test_a_failed_write_keeps_the_events_of_actions_taken(
    store: Store, tmp_path: Path
) -> None:
    """Results of statements that ran are not dropped with a failed commit: they are
    written, before anything newer, once the store takes writes again."""
    auditor = Auditor(store)
    db = tmp_path / "wg.db"
    try:
        await auditor.record("pg.statement", actor="ann", text="select 1")
        _rename(db, "audit_events", "audit_events_away")  # every append now fails
        auditor.submit("pg.result", actor="ann", rows=1)
        with pytest.raises(AuditUnavailable):
            await auditor.record("pg.statement", actor="ann", text="select 2")  # not run
        _rename(db, "audit_events_away", "audit_events")
        await auditor.record("pg.statement", actor="ann", text="select 3")
    finally:
        await auditor.aclose()
    kinds = [(e.kind, e.data.get("text")) for e in store.audit.list_all()]
    assert kinds == [
        ("pg.statement", "select 1"),
        ("pg.result", None),
        ("pg.statement", "select 3"),
    ]
    assert store.audit.verify() is None


async def test_kept_events_are_retried_without_new_ones(store: Store, tmp_path: Path) -> None:
    auditor = Auditor(store)
    db = tmp_path / "wg.db"
    try:
        _rename(db, "audit_events", "audit_events_away")
        auditor.submit("pg.result", actor="ann", rows=1)
        with pytest.raises(AuditUnavailable):  # the commit that failed to write it too
            await auditor.record("pg.statement", actor="ann", text="select 1")
        _rename(db, "audit_events_away", "audit_events")
        deadline = asyncio.get_running_loop().time() + 30
        while not store.audit.list_all():
            assert asyncio.get_running_loop().time() < deadline, "kept event never written"
            await asyncio.sleep(0.05)
    finally:
        await auditor.aclose()
    assert [e.kind for e in store.audit.list_all()] == ["pg.result"]
