"""The PostgreSQL door's asyncio driver: a real client socket on loopback, the real tunnel
stream over an in-memory wire played by the test as the agent, a real SQLite audit log.

The session object decides (tests/gateway/test_pgsession.py); these check that the driver
carries its endings out: what the client reads, when it reads end-of-file, what is recorded.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest

from gateway.audit import Auditor
from gateway.auth import Authenticator, Identity
from gateway.protocols.postgres import PostgresFrontDoor
from gateway.sessions import Session, SessionBroker
from gateway.store import ConnectionRecord, Store
from shared.pgwire.backend import (
    AuthenticationOk,
    BackendKeyData,
    BackendMessage,
    ErrorResponse,
    ReadyForQuery,
    backend_key_data,
    decode_backend,
    error_response,
    ready_for_query,
)
from shared.pgwire.framing import MessageReader
from shared.pgwire.frontend import Query, Terminate
from shared.tunnel.frames import OpenResult, ResetCode
from shared.tunnel.session import Role
from shared.tunnel.stream import DataReceived, Opened, RemoteClosed, TunnelStream

STARTUP = backend_key_data(4242, b"srv!") + ready_for_query("I")
FATAL = error_response("57P01", "terminating connection due to administrator command")
DEADLINE = 10.0


class MemoryWire:
    def __init__(self, inbox: asyncio.Queue[Any], outbox: asyncio.Queue[Any]) -> None:
        self.inbox, self.outbox = inbox, outbox

    async def read(self) -> Any:
        return await self.inbox.get()

    async def write(self, message: bytes) -> None:
        await self.outbox.put(message)

    async def finish(self) -> None:
        await self.outbox.put(None)


@dataclass
class Broker:
    """Where the door records a session's end (`SessionBroker.finish`)."""

    ended: asyncio.Future[str | None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )

    async def finish(self, session: Session, *, error: str | None = None) -> None:
        self.ended.set_result(error)


@dataclass
class Relay:
    client: tuple[asyncio.StreamReader, asyncio.StreamWriter]
    agent: TunnelStream
    broker: Broker
    door: PostgresFrontDoor
    store: Store


@pytest.fixture
async def relay(tmp_path: Path) -> AsyncIterator[Relay]:
    """A client connected to the door, its session open on an agent the test plays."""
    store = Store.open(f"sqlite:///{tmp_path / 'wg.db'}")
    auditor = Auditor(store)
    up: asyncio.Queue[Any] = asyncio.Queue()
    down: asyncio.Queue[Any] = asyncio.Queue()
    gateway_side = TunnelStream("s-1", Role.GATEWAY, MemoryWire(up, down))
    agent = TunnelStream("s-1", Role.AGENT, MemoryWire(down, up))
    await agent.send_open_result(OpenResult(True))
    assert await gateway_side.receive() == Opened()
    broker = Broker()
    door = PostgresFrontDoor(
        ssl.create_default_context(),
        cast(Authenticator, None),
        cast(SessionBroker, broker),
        auditor,
    )
    session = Session(
        "s-1",
        Identity("alice"),
        ConnectionRecord("pg-main", "postgres", "pool", "db.internal", 5432),
        gateway_side,
        cast(Any, None),
    )

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await door._relay(reader, writer, session, 4)
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield Relay(client, agent, broker, door, store)
    finally:
        client[1].close()
        server.close()
        async with asyncio.timeout(DEADLINE):
            await server.wait_closed()
        await auditor.aclose()
        store.close()


async def read_until(
    reader: asyncio.StreamReader, done: Callable[[list[BackendMessage]], bool]
) -> tuple[list[BackendMessage], bool]:
    """Messages the client reads until `done(messages)`, or end-of-file (True)."""
    frames = MessageReader()
    got: list[BackendMessage] = []
    async with asyncio.timeout(DEADLINE):
        while not done(got):
            data = await reader.read(65536)
            if not data:
                return got, True
            frames.feed(data)
            while (message := frames.next_message()) is not None:
                got.append(decode_backend(message))
    return got, False


async def agent_gets(agent: TunnelStream, want: bytes) -> None:
    got = b""
    async with asyncio.timeout(DEADLINE):
        while len(got) < len(want):
            event = await agent.receive()
            assert isinstance(event, DataReceived), event
            got += event.payload
    assert got == want


async def within(awaitable: Awaitable[Any]) -> Any:
    async with asyncio.timeout(DEADLINE):
        return await awaitable


async def started(relay: Relay) -> None:
    await relay.agent.send_data(STARTUP)
    got, _ = await read_until(
        relay.client[0], lambda m: bool(m) and isinstance(m[-1], ReadyForQuery)
    )
    assert isinstance(got[0], AuthenticationOk) and isinstance(got[1], BackendKeyData)
    assert got[1].pid == 4242 and got[1].secret != b"srv!"


async def test_a_fatal_then_the_servers_close_reaches_the_client_as_error_then_eof(
    relay: Relay,
) -> None:
    await started(relay)
    reader, writer = relay.client
    writer.write(Query("select pg_sleep(60)").encode())
    await agent_gets(relay.agent, Query("select pg_sleep(60)").encode())
    await relay.agent.send_data(FATAL)
    await relay.agent.send_close()
    got, eof = await read_until(reader, lambda _: False)
    assert eof and len(got) == 1 and isinstance(got[0], ErrorResponse)
    assert got[0].fields["C"] == "57P01"
    assert await within(relay.broker.ended) == (
        "the server ended the session: 57P01 terminating connection due to administrator command"
    )
    assert await within(relay.agent.receive()) == RemoteClosed()  # both directions closed
    assert len(relay.door.cancel_keys) == 0  # the client's cancel key went with the session


async def test_a_clients_terminate_is_forwarded_and_the_session_ends_cleanly(relay: Relay) -> None:
    await started(relay)
    writer = relay.client[1]
    writer.write(Terminate().encode())
    await agent_gets(relay.agent, Terminate().encode())
    assert await within(relay.agent.receive()) == RemoteClosed()  # the client's half-close
    await relay.agent.send_close()
    assert await within(relay.broker.ended) is None


async def test_an_agent_gone_mid_statement_is_named_to_the_client_then_eof(relay: Relay) -> None:
    await started(relay)
    reader, writer = relay.client
    writer.write(Query("select pg_sleep(60)").encode())
    await agent_gets(relay.agent, Query("select pg_sleep(60)").encode())
    await relay.agent.reset(ResetCode.TARGET_UNREACHABLE, "target connection lost")
    got, eof = await read_until(reader, lambda _: False)
    assert eof and len(got) == 1 and isinstance(got[0], ErrorResponse)
    assert got[0].fields["C"] == "08006"
    assert got[0].fields["M"] == "connection 'pg-main': session ended: target connection lost"
    assert await within(relay.broker.ended) == "target connection lost"


async def test_masking_counts_beside_the_data_are_audited_for_the_session(relay: Relay) -> None:
    """The agent's MaskReport reaches the session through the relay (`on_report`)."""
    await started(relay)
    reader, writer = relay.client
    writer.write(Query("select email from users").encode())
    await agent_gets(relay.agent, Query("select email from users").encode())
    await relay.agent.send_mask_report((("email", "email", 2),))
    await relay.agent.send_data(ready_for_query("I"))
    await read_until(reader, lambda m: bool(m) and isinstance(m[-1], ReadyForQuery))
    # Submitted in order with the data, before the client read it; the queue writes in order.
    await within(relay.door._audit.record("test.barrier"))
    masked = relay.store.audit.list_all(kind="pg.masked")
    assert masked[0].session_id == "s-1"
    assert masked[0].data["counts"] == [{"column": "email", "detector": "email", "count": 2}]
