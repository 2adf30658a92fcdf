"""The fleet's members as the gateway tells its agents (gateway/agents/service.py), and the
registry keeping one connection per agent process."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from gateway.agents.registry import AgentConn, AgentRegistry
from gateway.agents.service import AgentService
from gateway.audit import Auditor
from gateway.store import Store
from shared.tunnel.frames import MEMBERS_CAPABILITY, Goodbye, Members, ResetCode

SELF = "10.0.0.1:8444"
PEER = "10.0.0.2:8444"
NEW = "10.0.0.3:8444"


def conn(instance: str, capabilities: Sequence[str] = ()) -> AgentConn:
    return AgentConn("a", "default", b"", instance, "v", frozenset(capabilities), "peer")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store.open(f"sqlite:///{tmp_path / 'wardgate.db'}")
    try:
        yield store
    finally:
        store.close()


class Provider:
    """The members as the store would list them; `fail` makes the next asks fail."""

    def __init__(self, *members: str) -> None:
        self.members = list(members)
        self.fail = False
        self.asked = asyncio.Event()

    async def __call__(self) -> Sequence[str]:
        self.asked.set()
        if self.fail:
            raise ConnectionError("store unavailable")
        return list(self.members)


def service(store: Store, registry: AgentRegistry, provider: Provider | None) -> AgentService:
    return AgentService(store, registry, Auditor(store), member=SELF, members=provider)


async def asks(provider: Provider, n: int) -> None:
    for _ in range(n):
        provider.asked.clear()
        await provider.asked.wait()


async def test_this_member_alone_by_default(store: Store) -> None:
    svc = service(store, AgentRegistry(ping_interval=10, open_timeout=5), None)
    assert await svc.members() == (SELF,)


async def test_the_members_are_this_one_and_the_providers_each_once(store: Store) -> None:
    provider = Provider(PEER, SELF, PEER)
    svc = service(store, AgentRegistry(ping_interval=10, open_timeout=5), provider)
    assert await svc.members() == (SELF, PEER)


async def test_a_failing_provider_leaves_this_member_alone(store: Store) -> None:
    provider = Provider(PEER)
    provider.fail = True
    svc = service(store, AgentRegistry(ping_interval=10, open_timeout=5), provider)
    assert await svc.members() == (SELF,)


async def test_a_change_is_told_to_agents_that_understand_it_and_only_those(
    store: Store,
) -> None:
    registry = AgentRegistry(ping_interval=10, open_timeout=5)
    fleet_agent = conn("i1", [MEMBERS_CAPABILITY])
    older_agent = AgentConn("b", "default", b"", "i2", "v", frozenset(), "peer")
    registry.register(fleet_agent)
    registry.register(older_agent)
    provider = Provider(PEER)
    svc = service(store, registry, provider)
    assert await svc.members() == (SELF, PEER)
    async with asyncio.TaskGroup() as tg:
        watch = tg.create_task(svc.watch_members(interval=0.01))
        await asks(provider, 2)
        assert fleet_agent.outbox.empty()  # no change, nothing said
        provider.members.append(NEW)
        told = await asyncio.wait_for(fleet_agent.outbox.get(), 5)
        assert told == Members((SELF, PEER, NEW))
        # A failed poll keeps the last list: agents are not told that members vanished.
        provider.fail = True
        await asks(provider, 2)
        provider.fail = False
        await asks(provider, 2)
        assert fleet_agent.outbox.empty()
        watch.cancel()
    assert older_agent.outbox.empty()


def test_the_same_agent_process_again_replaces_its_connection_without_stopping() -> None:
    registry = AgentRegistry(ping_interval=10, open_timeout=5)
    first, second = conn("i1"), conn("i1")
    registry.register(first)
    assert registry.register(second) is first
    goodbye = first.outbox.get_nowait()
    assert isinstance(goodbye, Goodbye)
    assert goodbye.code is not ResetCode.SUPERSEDED  # which would stop the agent
    assert first.closed.is_set() and registry.get("a") is second


def test_another_process_with_the_key_is_still_superseded() -> None:
    registry = AgentRegistry(ping_interval=10, open_timeout=5)
    first, second = conn("i1"), conn("i2")
    registry.register(first)
    registry.register(second)
    assert first.outbox.get_nowait() == Goodbye(
        ResetCode.SUPERSEDED, "another connection with this agent key"
    )
