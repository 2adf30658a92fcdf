"""The generic TCP door (gateway/protocols/tcp.py) and the agent's pump (agent/protocols/tcp.py)
joined by an in-memory tunnel: a real WebSocket client through hypercorn, a real target on
loopback, and the session record of each ending."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import pytest
from hypercorn.asyncio import serve
from hypercorn.config import Config
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from agent.protocols import tcp as agent_tcp
from gateway.agents.registry import AgentRegistry
from gateway.audit import Auditor
from gateway.auth import Identity
from gateway.policy.grants import AccessPolicy, Grant, Role
from gateway.protocols import tcp as gateway_tcp
from gateway.sessions import SessionBroker
from gateway.store import ConnectionRecord, Store
from shared.tasks import TaskOwner
from tests.fixtures.tunnel_agent import LocalRegistry
from tests.fixtures.wardgate import free_port, wait_for

ACCESS = AccessPolicy([Role("ops", groups=frozenset({"ops"}), grants=(Grant("echo", "admin"),))])
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclasses.dataclass
class Rig:
    url: str
    store: Store
    target: dict[str, Handler]  # what the target does with the next connection

    def ended(self) -> list[Any]:
        return [s for s in self.store.sessions.list_all() if s.status != "open"]


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    target: dict[str, Handler] = {}

    async def on_target(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await target["handler"](reader, writer)

    server = await asyncio.start_server(on_target, "127.0.0.1", 0)
    store = Store.open(f"sqlite:///{tmp_path / 'wg.db'}")
    store.identity.ensure_user("alice", groups=("ops",))
    port = server.sockets[0].getsockname()[1]
    store.connections.upsert(ConnectionRecord("echo", "tcp", "default", "127.0.0.1", port))
    auditor = Auditor(store)
    registry = LocalRegistry(agent_tcp.serve)
    broker = SessionBroker(store, cast(AgentRegistry, registry), auditor, None, ACCESS)

    async def door(ws: WebSocket) -> None:
        await ws.accept()
        session = await broker.open(
            Identity("alice", groups=("ops",)), "echo", protocol="tcp", client_addr="test"
        )
        await gateway_tcp.relay(ws, broker, session)

    config = Config()
    web_port = free_port()
    config.bind = [f"127.0.0.1:{web_port}"]
    stop = asyncio.Event()
    owner = TaskOwner("test-web")
    owner.spawn(
        serve(Starlette(routes=[WebSocketRoute("/tcp", door)]), config, shutdown_trigger=stop.wait),  # type: ignore[arg-type]
        name="hypercorn",
    )
    await asyncio.to_thread(wait_for, lambda: _listening(web_port), "hypercorn to listen")
    try:
        yield Rig(f"ws://127.0.0.1:{web_port}/tcp", store, target)
    finally:
        stop.set()
        await owner.aclose()
        await registry.aclose()
        await broker.aclose()
        await auditor.aclose()
        server.close()
        store.close()


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


async def ended(rig: Rig) -> Any:
    await asyncio.to_thread(wait_for, lambda: rig.ended(), "the session to be recorded")
    (session,) = rig.ended()
    return session


async def test_half_closes_cross_both_ways_and_the_session_ends_closed(rig: Rig) -> None:
    async def echo_then_bye(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.read()  # to the client's half-close
        writer.write(b"echo:" + data)
        writer.write_eof()
        await writer.drain()
        writer.close()

    rig.target["handler"] = echo_then_bye
    async with connect(rig.url) as ws:
        await ws.send(b"ping")
        await ws.send(b"")  # the client's half-close
        assert await ws.recv() == b"echo:ping"
        assert await ws.recv() == b""  # the target's half-close
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000
    session = await ended(rig)
    assert (session.status, session.error) == ("closed", None)


async def test_a_target_that_fails_ends_the_session_failed_with_the_reason(rig: Rig) -> None:
    async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"partial")
        await writer.drain()
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # a reset, not an end of stream

    rig.target["handler"] = reset
    async with connect(rig.url) as ws:
        assert await ws.recv() == b"partial"
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4502
    assert closed.value.rcvd.reason.startswith("target connection failed")
    session = await ended(rig)
    assert session.status == "failed"
    assert session.error.startswith("target connection failed"), session.error
