"""The fleet's repository (gateway/store/members.py) on a real SQLite store."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.config import FleetConfig
from gateway.fleet.membership import Membership
from gateway.store import SessionRecord, Store
from gateway.store.members import GATEWAY_LOST, GATEWAY_STOPPED, HEARTBEAT_LOST, STOPPED
from tests.gateway.test_store import T0, Clock

TIMEOUT = 10.0


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> Iterator[Store]:
    with Store.open(f"sqlite:///{tmp_path / 'wardgate.db'}", clock=clock) as opened:
        yield opened


def join(store: Store, member_id: str) -> None:
    store.members.register(
        member_id,
        agent_address=f"{member_id}:8444",
        public_address=f"{member_id}:8443",
        version="1",
    )


def session(store: Store, session_id: str, member: str | None) -> None:
    store.sessions.create(
        SessionRecord(
            id=session_id,
            user="alice",
            connection="db1",
            protocol="postgres",
            client_addr="198.51.100.7:50000",
            started_at=T0,
            member=member,
        )
    )


def test_a_registered_member_is_listed_live_with_its_addresses(store: Store) -> None:
    join(store, "gw-a")
    [member] = store.members.list_all()
    assert (member.id, member.agent_address, member.public_address) == (
        "gw-a",
        "gw-a:8444",
        "gw-a:8443",
    )
    assert member.live and member.started_at == member.heartbeat_at == T0


def test_a_session_records_its_member(store: Store) -> None:
    session(store, "s1", "gw-a")
    found = store.sessions.get("s1")
    assert found is not None and found.member == "gw-a"


def test_a_silent_member_is_reaped_and_its_open_sessions_end_as_gateway_lost(
    store: Store, clock: Clock
) -> None:
    join(store, "gw-a")
    join(store, "gw-b")
    session(store, "open-on-a", "gw-a")
    session(store, "ended-on-a", "gw-a")
    store.sessions.end("ended-on-a", status="closed", error=None, bytes_up=1, bytes_down=2)
    session(store, "open-on-b", "gw-b")
    clock.advance(TIMEOUT)
    assert store.members.heartbeat("gw-b")
    assert store.members.reap(TIMEOUT, by="gw-b") == []  # exactly the bound: not late yet
    clock.advance(1)

    [reaped] = store.members.reap(TIMEOUT, by="gw-b")

    assert (reaped.member, reaped.heartbeat_at, reaped.sessions) == ("gw-a", T0, ("open-on-a",))
    lost = store.sessions.get("open-on-a")
    assert lost is not None
    assert (lost.status, lost.error, lost.ended_at) == ("failed", GATEWAY_LOST, clock.now)
    kept = store.sessions.get("ended-on-a")
    assert kept is not None and (kept.status, kept.error) == ("closed", None)
    other = store.sessions.get("open-on-b")
    assert other is not None and other.ended_at is None
    states = {m.id: (m.live, m.gone_reason) for m in store.members.list_all()}
    assert states == {"gw-a": (False, HEARTBEAT_LOST), "gw-b": (True, None)}
    # Reaped once: a second reaper finds nothing left to do.
    assert store.members.reap(TIMEOUT, by="gw-b") == []


def test_reaping_is_audited_in_the_chain(store: Store, clock: Clock) -> None:
    join(store, "gw-a")
    session(store, "s1", "gw-a")
    clock.advance(TIMEOUT + 1)
    store.members.reap(TIMEOUT, by="gw-b")
    lost = store.audit.list_all(kind="member.lost")
    assert [e.data for e in lost] == [
        {"member": "gw-a", "heartbeat_at": T0.isoformat(), "sessions": 1, "by": "gw-b"}
    ]
    [closed] = store.audit.list_all(kind="session.close")
    assert (closed.session_id, closed.actor, closed.data) == (
        "s1",
        "alice",
        {"error": GATEWAY_LOST, "member": "gw-a", "by": "gw-b"},
    )
    assert store.audit.verify() is None


def test_a_reaped_member_learns_it_at_its_next_heartbeat_and_can_join_again(
    store: Store, clock: Clock
) -> None:
    join(store, "gw-a")
    clock.advance(TIMEOUT + 1)
    store.members.reap(TIMEOUT, by="gw-b")
    assert store.members.heartbeat("gw-a") is False
    join(store, "gw-a")
    assert store.members.heartbeat("gw-a") is True
    [member] = store.members.list_all()
    assert member.live and member.started_at == T0  # the first start is kept


def test_a_member_that_leaves_is_gone_at_once_and_reaps_nothing(store: Store, clock: Clock) -> None:
    join(store, "gw-a")
    session(store, "left-open", "gw-a")
    assert store.members.leave("gw-a") == ("left-open",)
    left = store.sessions.get("left-open")
    assert left is not None and (left.status, left.error) == ("failed", GATEWAY_STOPPED)
    [closed] = store.audit.list_all(kind="session.close")
    assert closed.data == {"error": GATEWAY_STOPPED, "member": "gw-a", "by": "gw-a"}
    assert store.members.leave("gw-a") == ()
    [member] = store.members.list_all()
    assert (member.live, member.gone_reason) == (False, STOPPED)
    clock.advance(TIMEOUT + 1)
    assert store.members.reap(TIMEOUT, by="gw-b") == []


def test_gone_members_are_forgotten_after_a_day_and_live_ones_listed_first(
    store: Store, clock: Clock
) -> None:
    join(store, "gw-old")
    store.members.leave("gw-old")
    clock.advance(1)
    join(store, "gw-new")
    assert [m.id for m in store.members.list_all()] == ["gw-new", "gw-old"]
    clock.advance(86_400)
    assert store.members.heartbeat("gw-new")
    store.members.reap(TIMEOUT, by="gw-new")
    assert [m.id for m in store.members.list_all()] == ["gw-new"]


def test_the_first_offer_of_an_identity_item_is_kept(store: Store) -> None:
    assert store.members.identity("tls-ca") is None
    assert store.members.offer_identity("tls-ca", "enc:v1:first", by="gw-a") == "enc:v1:first"
    assert store.members.offer_identity("tls-ca", "enc:v1:second", by="gw-b") == "enc:v1:first"
    assert store.members.identity("tls-ca") == "enc:v1:first"


def test_sessions_of_stores_before_members_have_none(store: Store) -> None:
    session(store, "s1", None)
    found = store.sessions.get("s1")
    assert found is not None and dataclasses.replace(found, member=None) == found


class Ticks:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_a_member_reaps_only_after_a_whole_timeout_of_its_own_heartbeats(
    store: Store, clock: Clock
) -> None:
    ticks = Ticks()
    reaped_self: list[bool] = []

    async def on_reaped() -> None:
        reaped_self.append(True)

    config = FleetConfig(heartbeat_interval=2.0, member_timeout=TIMEOUT)
    me = Membership(store, "gw-a", config, on_reaped=on_reaped, clock=ticks)
    join(store, "gw-dead")
    await me.join(agent_address="a:8444", public_address="a:8443")
    clock.advance(TIMEOUT + 1)  # gw-dead is late, but gw-a only just joined
    ticks.now = TIMEOUT - 1
    await me.beat()
    assert {m.id: m.live for m in store.members.list_all()} == {"gw-a": True, "gw-dead": True}
    ticks.now = TIMEOUT
    await me.beat()
    assert {m.id: m.live for m in store.members.list_all()} == {"gw-a": True, "gw-dead": False}
    assert reaped_self == []


async def test_a_member_reaped_while_it_runs_ends_its_sessions_and_joins_again(
    store: Store, clock: Clock
) -> None:
    ended: list[str] = []

    async def on_reaped() -> None:
        ended.append("all")

    config = FleetConfig(heartbeat_interval=2.0, member_timeout=TIMEOUT)
    me = Membership(store, "gw-a", config, on_reaped=on_reaped, clock=Ticks())
    await me.join(agent_address="a:8444", public_address="a:8443")
    clock.advance(TIMEOUT + 1)  # paused: another member reaps it
    store.members.reap(TIMEOUT, by="gw-b")
    await me.beat()
    assert ended == ["all"]
    [member] = store.members.list_all()
    assert member.live and member.heartbeat_at == clock.now
