"""A real agent and two real gateway tunnel services on loopback (gRPC, plaintext), the first
with a members provider the test changes: the agent adds a loop for a member told to it by
a Members frame, and stops the loop of a member gone from the list once its connection
ends, instead of dialling it again."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from grpc import aio

from agent.app import Agent
from gateway.agents.registry import AgentRegistry
from gateway.agents.service import AgentService
from gateway.audit import Auditor
from gateway.store import Store
from shared.agentkey import AgentKey, hash_secret, new_secret
from shared.tunnel.rpc import add_tunnel_service, make_server
from tests.fixtures.wardgate import free_port

POLL = 0.05  # the members poll of the test's gateways (MEMBERS_POLL is 2 s)
DEADLINE = 10.0


@dataclass
class Member:
    address: str
    registry: AgentRegistry
    server: aio.Server


class Listing:
    def __init__(self) -> None:
        self.members: list[str] = []

    async def __call__(self) -> Sequence[str]:
        return list(self.members)


@asynccontextmanager
async def member(store: Store, members: Listing | None) -> AsyncIterator[Member]:
    registry = AgentRegistry(ping_interval=0.5, open_timeout=5)
    address = f"127.0.0.1:{free_port()}"
    service = AgentService(store, registry, Auditor(store), member=address, members=members)
    server = make_server()
    add_tunnel_service(server, service.control, service.session)
    server.add_insecure_port(address)
    await server.start()
    async with asyncio.TaskGroup() as tg:
        watch = tg.create_task(service.watch_members(POLL))
        try:
            yield Member(address, registry, server)
        finally:
            watch.cancel()
            await registry.aclose()
            await server.stop(None)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store.open(f"sqlite:///{tmp_path / 'wardgate.db'}")


async def until(condition: Callable[[], object], what: str) -> None:
    """Wait for `condition` (the agent's or a registry's state) with a deadline."""
    try:
        async with asyncio.timeout(DEADLINE):
            while not condition():  # noqa: ASYNC110 (no event to wait on: plain state)
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


async def test_the_agent_follows_the_member_list(store: Store) -> None:
    secret = new_secret()
    store.agents.create("a", "default", hash_secret(secret))
    listing = Listing()
    async with member(store, listing) as one, member(store, None) as two:
        host, port = one.address.rsplit(":", 1)
        agent = Agent(AgentKey("a", secret, host, int(port), None, True), insecure=True)
        async with asyncio.TaskGroup() as tg:
            running = tg.create_task(agent.run())
            await until(lambda: one.registry.get("a"), "the agent on member 1")
            assert set(agent.status.members) == {one.address}

            listing.members = [two.address]  # member 2 joins: told by a Members frame
            await until(lambda: two.registry.get("a"), "the agent on member 2")
            await until(lambda: agent.status.members[two.address].connected, "its state")

            listing.members = []  # member 2 leaves the list; its connection is left alone
            await until(lambda: agent.fleet.known == (one.address,), "the new list")
            assert agent.status.members[two.address].connected
            await two.server.stop(None)  # ... until it ends: then the loop stops
            await until(lambda: two.address not in agent.status.members, "the loop to stop")
            assert one.registry.get("a") is not None
            running.cancel()
    store.close()
