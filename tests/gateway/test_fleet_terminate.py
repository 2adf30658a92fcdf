"""Ending one session wherever it runs (gateway/fleet/terminate.py): on a real SQLite store
with one member, and over a real PostgreSQL store and bus with two. Agents are stand-ins
(tests/gateway/test_session_authz.py): what is under test is which member ends the session,
what it records, and what the asker is told."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from typing import cast

import pytest
import sqlalchemy as sa
from hypothesis import given
from hypothesis import strategies as st

from gateway.agents.registry import AgentRegistry
from gateway.audit import Auditor
from gateway.auth import Identity
from gateway.config import FleetConfig
from gateway.fleet.bus import Bus, conninfo
from gateway.fleet.terminate import (
    BadMessage,
    TerminateAnswer,
    TerminateRefused,
    TerminateRequest,
    Terminator,
    reason_text,
)
from gateway.sessions import SessionBroker
from gateway.store import ConnectionRecord, SessionRecord, Store
from shared.tasks import TaskOwner
from shared.tunnel.frames import ResetCode
from tests.fixtures.postgres import PostgresServer
from tests.gateway.test_session_authz import POLICY, FakeRegistry, FakeStream

ADMIN = Identity("admin", is_admin=True)
FLEET = FleetConfig()


# ---- messages ----------------------------------------------------------------------------


@given(st.text(), st.text(), st.text(), st.text())
def test_a_request_round_trips(request_id: str, session: str, reason: str, by: str) -> None:
    request = TerminateRequest(request_id, session, reason, by)
    assert TerminateRequest.decode(request.encode()) == request


@given(st.text(), st.text(), st.booleans())
def test_an_answer_round_trips(request_id: str, member: str, ending: bool) -> None:
    answer = TerminateAnswer(request_id, member, ending)
    assert TerminateAnswer.decode(answer.encode()) == answer


@given(st.text())
def test_a_bus_message_that_is_not_ours_is_refused_as_such(payload: str) -> None:
    for decode in (TerminateRequest.decode, TerminateAnswer.decode):
        with contextlib.suppress(BadMessage):
            decode(payload)


def test_the_reason_is_one_line_naming_an_administrator() -> None:
    assert reason_text(None) == "terminated by an administrator"
    assert reason_text("  ") == "terminated by an administrator"
    assert reason_text("incident\n 42") == "terminated by an administrator: incident 42"


# ---- one member: SQLite, no bus ------------------------------------------------------------


@dataclasses.dataclass
class Member:
    id: str
    broker: SessionBroker
    auditor: Auditor
    terminator: Terminator


def _member(store: Store, member_id: str, bus: Bus | None, answer_timeout: float = 3.0) -> Member:
    auditor = Auditor(store)
    registry = cast(AgentRegistry, FakeRegistry())
    broker = SessionBroker(store, registry, auditor, None, POLICY, member=member_id)
    terminator = Terminator(store, broker, member_id, bus, FLEET, answer_timeout=answer_timeout)
    return Member(member_id, broker, auditor, terminator)


def _join(store: Store, member_id: str) -> None:
    store.members.register(member_id, agent_address="a:1", public_address="p:1", version="0")


@pytest.fixture
async def single(tmp_path: Path) -> AsyncIterator[tuple[Store, Member]]:
    store = Store.open(f"sqlite:///{tmp_path}/wg.db")
    store.connections.upsert(
        ConnectionRecord(name="pg", type="postgres", pool="default", host="10.0.0.1", port=1)
    )
    _join(store, "here")
    member = _member(store, "here", None)
    try:
        yield store, member
    finally:
        await member.auditor.aclose()
        store.close()


async def _refused(member: Member, session_id: str) -> TerminateRefused:
    with pytest.raises(TerminateRefused) as refused:
        await member.terminator.terminate(session_id, reason=None, by="admin")
    return refused.value


async def test_a_live_session_is_ended_here_and_its_event_names_who_asked(
    single: tuple[Store, Member],
) -> None:
    store, member = single
    session = await member.broker.open(ADMIN, "pg", protocol="postgres", client_addr="c")
    done = await member.terminator.terminate(session.id, reason="incident", by="ops-lead")
    assert (done.member, done.reason) == ("here", "terminated by an administrator: incident")
    assert cast(FakeStream, session.stream).resets == [(ResetCode.CANCELLED, done.reason)]
    assert not member.broker.is_live(session.id)
    [event] = store.audit.list_all(kind="session.terminated")
    assert event.session_id == session.id
    assert event.data["by"] == "ops-lead" and event.data["reason"] == done.reason
    again = await _refused(member, session.id)  # its relay has not finished yet
    assert (again.kind, again.message) == (
        "ended",
        f"session {session.id!r} is already ending (on member here)",
    )


async def test_unknown_and_ended_sessions_are_refused_saying_which(
    single: tuple[Store, Member],
) -> None:
    store, member = single
    unknown = await _refused(member, "nope")
    assert (unknown.kind, unknown.message) == ("unknown", "session 'nope' does not exist")
    session = await member.broker.open(ADMIN, "pg", protocol="postgres", client_addr="c")
    await member.broker.finish(session, error="server closed the connection")
    ended = await _refused(member, session.id)
    record = store.sessions.get(session.id)
    assert record is not None and record.ended_at is not None
    assert (ended.kind, ended.message) == (
        "ended",
        f"session {session.id!r} already ended at "
        f"{record.ended_at.isoformat(timespec='seconds')} "
        "(failed: server closed the connection)",
    )


async def test_a_session_left_by_a_stopped_gateway_is_for_the_sweep(
    single: tuple[Store, Member],
) -> None:
    store, member = single
    _join(store, "before")  # a previous process on this SQLite store, killed
    store.sessions.create(
        SessionRecord(
            id="left0",
            user="admin",
            connection="pg",
            protocol="postgres",
            client_addr="c",
            started_at=dt.datetime.now(dt.UTC),
            member="before",
        )
    )
    lost = await _refused(member, "left0")
    assert lost.kind == "lost"
    assert lost.message.startswith(
        "member before, which holds session 'left0', does not answer (last heartbeat "
    )
    assert lost.message.endswith("the fleet's lost-member sweep closes the session within 12 s")


# ---- two members: PostgreSQL and its bus ---------------------------------------------------


@pytest.fixture
async def pair(postgres_db: PostgresServer) -> AsyncIterator[tuple[Store, Member, Member]]:
    store = Store.open(postgres_db.url())
    store.connections.upsert(
        ConnectionRecord(name="pg", type="postgres", pool="default", host="10.0.0.1", port=1)
    )
    tasks = TaskOwner("test")
    dsn = conninfo(sa.make_url(postgres_db.url()))
    members, buses = [], []
    for member_id in ("one", "two"):
        _join(store, member_id)
        bus = Bus(dsn)
        buses.append(bus)
        members.append(_member(store, member_id, bus, answer_timeout=0.5))
        tasks.spawn(bus.run(), name=f"bus {member_id}")
        async with asyncio.timeout(30):
            await bus.wait_listening()
    try:
        yield store, members[0], members[1]
    finally:
        await tasks.aclose()
        for bus in buses:
            await bus.aclose()
        for m in members:
            await m.auditor.aclose()
        store.close()


async def test_a_session_on_another_member_is_ended_there(
    pair: tuple[Store, Member, Member],
) -> None:
    store, one, two = pair
    session = await one.broker.open(ADMIN, "pg", protocol="postgres", client_addr="c")
    done = await two.terminator.terminate(session.id, reason=None, by="admin")
    assert done.member == "one"
    assert not one.broker.is_live(session.id)
    assert cast(FakeStream, session.stream).resets == [
        (ResetCode.CANCELLED, "terminated by an administrator")
    ]
    [event] = store.audit.list_all(kind="session.terminated")
    assert event.data["by"] == "admin"
    again = await _refused(two, session.id)  # asked twice: answered, not a timeout
    assert (again.kind, again.message) == (
        "ended",
        f"session {session.id!r} is already ending (on member one)",
    )


async def test_a_live_member_that_does_not_answer_is_a_timeout(
    pair: tuple[Store, Member, Member],
) -> None:
    store, _, two = pair
    # Open in the store on member one (its heartbeat fresh) but live in no broker.
    store.sessions.create(
        SessionRecord(
            id="stray",
            user="admin",
            connection="pg",
            protocol="postgres",
            client_addr="c",
            started_at=dt.datetime.now(dt.UTC),
            member="one",
        )
    )
    unanswered = await _refused(two, "stray")
    assert (unanswered.kind, unanswered.message) == (
        "unanswered",
        "member one, which holds session 'stray', did not answer within 0.5 s: try again "
        "(`wardgate members list` shows the fleet)",
    )
