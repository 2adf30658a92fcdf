"""Session search (gateway/api/search.py): who sees what, and each outcome found from the
audit events the gateway writes (canonical JSON, as the store keeps it)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import HTTPException

from gateway.api.search import SessionQuery, find_sessions, session_activity, visible_session
from gateway.auth import Identity
from gateway.store import SessionRecord, Store

T0 = dt.datetime(2026, 12, 7, 12, 0, tzinfo=dt.UTC)
ALICE = Identity("alice")
ADMIN = Identity("root", is_admin=True)


@pytest.fixture
def store() -> Iterator[Store]:
    with Store.open("sqlite://") as opened:
        yield opened


def session(store: Store, sid: str, n: int, **changes: Any) -> None:
    base = SessionRecord(sid, "alice", "db1", "postgres", "-", T0 + dt.timedelta(seconds=n))
    store.sessions.create(dataclasses.replace(base, **changes))


def event(store: Store, sid: str, kind: str, **data: Any) -> None:
    store.audit.append(kind, actor="alice", session_id=sid, data=data)


@pytest.fixture
def sessions(store: Store) -> Store:
    session(store, "ok", 0)
    event(store, "ok", "pg.statement", text="select 1")
    event(store, "ok", "pg.result", statement_seq=1, rows=1, error=None, sqlstate=None)
    session(store, "refused", 1)
    event(store, "refused", "pg.refused", text="drop table t", reason="policy: no-ddl")
    session(store, "masked", 2)
    event(store, "masked", "pg.statement", text="select email from users")
    event(
        store,
        "masked",
        "pg.result",
        statement_seq=4,
        rows=2,
        error=None,
        masked=[{"column": "email", "detector": "email", "count": 2}],
    )
    session(store, "held", 3)
    event(store, "held", "review.created", review="rv_1", text="delete from t")
    session(store, "kube", 3, protocol="kubernetes", connection="k8s")
    event(store, "kube", "k8s.request", verb="delete", decision="review", review="rv_2")
    event(store, "kube", "k8s.request", verb="get", decision="allow", review=None)
    session(store, "failed", 4, status="failed", error="agent gone")
    session(store, "exit", 5, protocol="ssh", connection="web-1")
    event(store, "exit", "ssh.exec", channel=0, command="false", pty=False)
    event(store, "exit", "ssh.exit", channel=0, command="false", status=1)
    session(store, "bob", 6, user="bob")
    event(store, "bob", "pg.statement", text="select 1")
    return store


async def ids(store: Store, who: Identity, **query: Any) -> list[str]:
    rows, _ = await find_sessions(store, who, SessionQuery(**query), limit=50)
    return [r.id for r in rows]


async def test_people_see_their_own_sessions_and_administrators_everyone_s(
    sessions: Store,
) -> None:
    assert "bob" not in await ids(sessions, ALICE)
    assert await ids(sessions, ALICE, user="bob") == await ids(sessions, ALICE)  # no way round
    assert await ids(sessions, ADMIN, user="bob") == ["bob"]
    with pytest.raises(HTTPException) as refused:
        await visible_session(sessions, ALICE, "bob")
    assert refused.value.status_code == 404
    assert (await visible_session(sessions, ADMIN, "bob")).user == "bob"


async def test_each_outcome_and_text(sessions: Store) -> None:
    assert await ids(sessions, ADMIN, outcome="refused") == ["refused"]
    assert await ids(sessions, ADMIN, outcome="masked") == ["masked"]
    assert await ids(sessions, ADMIN, outcome="held") == ["kube", "held"]
    assert await ids(sessions, ADMIN, outcome="failed") == ["exit", "failed"]
    assert await ids(sessions, ADMIN, text="drop table") == ["refused"]
    assert await ids(sessions, ADMIN, text="select 1") == ["bob", "ok"]
    assert await ids(sessions, ADMIN, text="false", protocol="ssh") == ["exit"]
    with pytest.raises(HTTPException) as unknown:
        await ids(sessions, ADMIN, outcome="odd")
    assert unknown.value.status_code == 422
    assert "refused, masked, held, failed" in str(unknown.value.detail)


async def test_pages_follow_by_keyset(sessions: Store) -> None:
    seen: list[str] = []
    before = None
    while True:
        rows, before = await find_sessions(sessions, ADMIN, SessionQuery(), limit=3, before=before)
        seen += [r.id for r in rows]
        if before is None:
            break
    assert seen == ["bob", "exit", "failed", "kube", "held", "masked", "refused", "ok"]


async def test_a_session_s_activity_holds_refused_statements_and_masking(sessions: Store) -> None:
    masked = await session_activity(sessions, "masked")
    assert [s["text"] for s in masked["statements"]] == ["select email from users"]
    assert masked["masked"] == [{"column": "email", "detector": "email", "count": 2}]
    refused = await session_activity(sessions, "refused")
    assert [(r["text"], r["reason"]) for r in refused["refused"]] == [
        ("drop table t", "policy: no-ddl")
    ]
    assert refused["statements"] == [] and refused["commands"] == []
