"""The broker's authorization hook and revocation of live sessions, on a real store.

The agent side is a stand-in (a registry that hands out recording streams): what is under
test is what the broker decides, audits and asks the agent to open.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, cast

import pytest

from gateway.agents.registry import AgentRegistry
from gateway.audit import Auditor
from gateway.auth import Identity
from gateway.crypto import hash_token
from gateway.policy.grants import AccessPolicy, Grant, Role
from gateway.sessions import SessionBroker, SessionError
from gateway.store import ConnectionRecord, Store
from shared.tunnel.frames import ResetCode, Target


@dataclasses.dataclass
class FakeStream:
    finished: bool = False
    resets: list[tuple[ResetCode, str]] = dataclasses.field(default_factory=list)
    bytes_in: int = 0
    bytes_out: int = 0

    async def reset(self, code: ResetCode, message: str) -> None:
        self.resets.append((code, message))
        self.finished = True

    async def aclose(self) -> None:
        pass


@dataclasses.dataclass
class FakeAgent:
    name: str = "agent-1"


class FakeRegistry:
    def __init__(self) -> None:
        self.targets: list[Target] = []

    async def open(self, session_id: str, target: Target, pool: str) -> tuple[Any, Any]:
        self.targets.append(target)
        return FakeStream(), FakeAgent()

    def release(self, agent: Any) -> None:
        pass


POLICY = AccessPolicy(
    [
        Role("readers", groups=frozenset({"readers"}), grants=(Grant("*", "read-only"),)),
        Role("writers", groups=frozenset({"writers"}), grants=(Grant("pg", "read-write"),)),
    ]
)


@dataclasses.dataclass
class Rig:
    path: Path  # of the store's SQLite file
    store: Store
    broker: SessionBroker
    registry: FakeRegistry
    auditor: Auditor


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    store = Store.open(f"sqlite:///{tmp_path / 'wg.db'}")
    for name, type_ in (("pg", "postgres"), ("cache", "tcp")):
        store.connections.upsert(
            ConnectionRecord(name=name, type=type_, pool="default", host="10.0.0.1", port=1)
        )
    auditor = Auditor(store)
    registry = FakeRegistry()
    broker = SessionBroker(store, cast(AgentRegistry, registry), auditor, None, POLICY)
    try:
        yield Rig(tmp_path / "wg.db", store, broker, registry, auditor)
    finally:
        await auditor.aclose()
        store.close()


def person(rig: Rig, name: str, groups: tuple[str, ...]) -> Identity:
    rig.store.identity.ensure_user(name, groups=groups)
    token = rig.store.identity.add_token(name, hash_token(f"wgt_{name}"), kind="access")
    return Identity(name, groups=groups, token_id=token.id)


async def test_no_grant_is_forbidden_and_audited(rig: Rig) -> None:
    nobody = person(rig, "nobody", ())
    with pytest.raises(SessionError) as refused:
        await rig.broker.open(nobody, "pg", protocol="postgres", client_addr="c")
    assert refused.value.kind == "forbidden"
    assert refused.value.message == "user 'nobody' has no access to connection 'pg'"
    events = rig.store.audit.list_all(kind="session.refused")
    assert events[-1].actor == "nobody" and events[-1].data["reason"] == (
        "no role grants this connection"
    )
    assert rig.registry.targets == []  # nothing reached an agent


async def test_read_only_postgres_is_opened_read_only_without_client_settings(rig: Rig) -> None:
    reader = person(rig, "rita", ("readers",))
    session = await rig.broker.open(
        reader,
        "pg",
        protocol="postgres",
        client_addr="c",
        extra_options={
            "startup.application_name": "psql",
            "startup.options": "-c default_transaction_read_only=off",
            "startup.default_transaction_read_only": "off",
            "startup.role": "postgres",
        },
    )
    assert session.access == "read-only"
    options = dict(rig.registry.targets[-1].options)
    assert options["startup.default_transaction_read_only"] == "on"
    assert options["startup.application_name"] == "psql"
    assert "startup.options" not in options and "startup.role" not in options


async def test_read_write_keeps_client_settings(rig: Rig) -> None:
    writer = person(rig, "walt", ("writers",))
    session = await rig.broker.open(
        writer,
        "pg",
        protocol="postgres",
        client_addr="c",
        extra_options={"startup.options": "-c work_mem=64MB"},
    )
    assert session.access == "read-write"
    assert rig.registry.targets[-1].options["startup.options"] == "-c work_mem=64MB"


async def test_read_only_on_tcp_cannot_be_enforced_so_it_is_refused(rig: Rig) -> None:
    reader = person(rig, "rex", ("readers",))
    with pytest.raises(SessionError, match="read-only access cannot be enforced on tcp"):
        await rig.broker.open(reader, "cache", protocol="tcp", client_addr="c")
    admin = Identity("admin", is_admin=True)
    assert (await rig.broker.open(admin, "cache", protocol="tcp", client_addr="c")).access == (
        "admin"
    )


async def test_revocations_in_the_store_end_live_sessions(rig: Rig) -> None:
    one, two = person(rig, "uno", ("readers",)), person(rig, "duo", ("readers",))
    s1 = await rig.broker.open(one, "pg", protocol="postgres", client_addr="c")
    s2 = await rig.broker.open(two, "pg", protocol="postgres", client_addr="c")
    assert await rig.broker.check_revocations() == 0
    rig.store.identity.revoke_token(one.token_id)  # as another gateway replica would
    assert await rig.broker.check_revocations() == 1
    assert cast(FakeStream, s1.stream).resets == [(ResetCode.CANCELLED, "credential revoked")]
    assert cast(FakeStream, s2.stream).resets == []
    assert [s.id for s in rig.broker.live] == [s2.id]
    assert await rig.broker.terminate(reason="user disabled", user="duo") == 1
    assert rig.store.audit.list_all(kind="session.terminated")[-1].data["reason"] == "user disabled"


def rename(db: Path, old: str, new: str) -> None:
    """Rename a table under the running gateway: with audit_events away, every append fails
    in the database, as on a full disk."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.execute(f"ALTER TABLE {old} RENAME TO {new}")


async def eventually(check: Callable[[], object], what: str) -> None:
    deadline = asyncio.get_running_loop().time() + 30
    while not check():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def test_revocation_ends_sessions_while_the_audit_log_is_down(rig: Rig) -> None:
    """Revocation fails closed: a session whose credential was revoked ends even when its
    `session.terminated` event cannot be written yet; the event follows once it can."""
    one, two = person(rig, "uno", ("readers",)), person(rig, "duo", ("readers",))
    s1 = await rig.broker.open(one, "pg", protocol="postgres", client_addr="c")
    s2 = await rig.broker.open(two, "pg", protocol="postgres", client_addr="c")
    rename(rig.path, "audit_events", "audit_events_away")
    rig.store.identity.revoke_token(one.token_id)
    assert await rig.broker.check_revocations() == 1
    assert cast(FakeStream, s1.stream).resets == [(ResetCode.CANCELLED, "credential revoked")]
    assert await rig.broker.terminate(reason="user disabled", user="duo") == 1
    assert cast(FakeStream, s2.stream).resets == [(ResetCode.CANCELLED, "user disabled")]
    assert rig.broker.live == []
    rename(rig.path, "audit_events_away", "audit_events")
    await eventually(
        lambda: len(rig.store.audit.list_all(kind="session.terminated")) == 2,
        "the terminations in the audit log",
    )
    events = rig.store.audit.list_all(kind="session.terminated")
    ended = {e.session_id: e.data["reason"] for e in events}
    assert ended == {s1.id: "credential revoked", s2.id: "user disabled"}
    assert rig.store.audit.verify() is None


async def test_a_session_whose_open_event_cannot_be_written_is_refused_and_ended(
    rig: Rig,
) -> None:
    reader = person(rig, "rita", ("readers",))
    rename(rig.path, "audit_events", "audit_events_away")
    with pytest.raises(SessionError) as refused:
        await rig.broker.open(reader, "pg", protocol="postgres", client_addr="c")
    assert refused.value.kind == "unavailable"
    assert refused.value.message.startswith("session not opened: audit log unavailable")
    assert rig.registry.targets == []  # nothing reached an agent
    assert rig.broker.live == []
    (row,) = rig.store.sessions.list_all()
    assert row.ended_at is not None, "the refused session's row is left open"
    assert row.status == "failed"
    assert row.error is not None and row.error.startswith("session not opened: audit log")
