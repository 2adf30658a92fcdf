"""The Kubernetes door's upgraded connections, both halves (gateway/protocols/kubernetes.py
and agent/protocols/kubernetes.py) over an in-memory tunnel, with real loopback sockets
and a real WebSocket server: bytes both ways, and how each side's close ends the session.

TLS has no half-close, so either end closing ends the session, cleanly on both sides.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

from agent.protocols import kubernetes as agent_kube
from gateway.auth import Identity
from gateway.protocols import kubernetes as gateway_kube
from gateway.sessions import Session
from gateway.store import ConnectionRecord
from shared.kubeapi import WS_BINARY, WS_TEXT, encode_ws, encode_ws_close
from shared.tasks import TaskOwner
from shared.tunnel.stream import DataReceived, RemoteClosed, TunnelStream
from tests.fixtures.tunnel import opened_pair, wire_of
from tests.fixtures.tunnel_agent import LocalAgent


def session_of(stream: TunnelStream) -> Session:
    connection = ConnectionRecord("k8s", "kubernetes", "default", "127.0.0.1", 443)
    return Session("s1", Identity("alice"), connection, stream, cast(Any, LocalAgent()))


@pytest.fixture
async def tasks() -> AsyncIterator[TaskOwner]:
    owner = TaskOwner("test")
    yield owner
    await owner.aclose()


async def upgraded_pair(
    tasks: TaskOwner, upstream: Any
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, asyncio.Future[Any], TunnelStream]:
    """A client connected through the gateway's and the agent's raw relays to `upstream`;
    the gateway's result (bytes, error) when its relay ends."""
    gateway_end, agent_end = await opened_pair()
    api = await asyncio.start_server(upstream, "127.0.0.1", 0)
    done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    async def agent_side() -> None:
        reader, writer = await asyncio.open_connection(*api.sockets[0].getsockname()[:2])
        try:
            await agent_kube._relay_raw(agent_end, reader, writer)
        finally:
            writer.close()  # as `_raw_upgrade` does
            api.close()

    async def door(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        done.set_result(await gateway_kube._relay_raw(session_of(gateway_end), reader, writer))
        writer.close()

    gateway = await asyncio.start_server(door, "127.0.0.1", 0)
    tasks.spawn(agent_side(), name="agent")
    reader, writer = await asyncio.open_connection(*gateway.sockets[0].getsockname()[:2])
    done.add_done_callback(lambda _: gateway.close())
    return reader, writer, done, agent_end


async def test_raw_bytes_both_ways_and_the_clients_close_ends_both_sides_cleanly(
    tasks: TaskOwner,
) -> None:
    upstream_saw_eof = asyncio.Event()

    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(b"pong:" + data)
            await writer.drain()
        upstream_saw_eof.set()
        writer.close()

    reader, writer, done, agent_end = await upgraded_pair(tasks, upstream)
    writer.write(b"ping")
    assert await reader.readexactly(9) == b"pong:ping"
    writer.write_eof()
    async with asyncio.timeout(10):
        nbytes, error = await done
        await upstream_saw_eof.wait()
    assert (nbytes, error) == (13, None)
    assert await reader.read() == b""  # the client's connection ends too
    assert agent_end.finished and agent_end.end_reason is None
    assert wire_of(agent_end).cancelled_reads == 0
    writer.close()


async def test_the_api_servers_last_words_reach_the_client_before_its_end(
    tasks: TaskOwner,
) -> None:
    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"last words")
        await writer.drain()
        writer.close()

    reader, writer, done, agent_end = await upgraded_pair(tasks, upstream)
    async with asyncio.timeout(10):
        assert await reader.read() == b"last words"  # then EOF
        nbytes, error = await done
    assert (nbytes, error) == (10, None)
    assert agent_end.end_reason is None
    writer.close()


async def test_exec_messages_and_the_api_servers_close_code_cross_the_tunnel(
    tasks: TaskOwner,
) -> None:
    async def echo(ws: ServerConnection) -> None:
        async for message in ws:
            if message == "bye":
                await ws.close(4000, "done")
                return
            await ws.send(message)

    gateway_end, agent_end = await opened_pair()
    async with serve(echo, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}") as ws:
            relay = tasks.spawn(agent_kube._relay_ws(agent_end, ws), name="agent")
            await gateway_end.send_data(encode_ws(WS_TEXT, b"hi"))
            await gateway_end.send_data(encode_ws(WS_BINARY, b"\x00\x01"))
            await gateway_end.send_data(encode_ws(WS_TEXT, b"bye"))
            async with asyncio.timeout(10):
                events = [await gateway_end.receive() for _ in range(4)]
            assert events == [
                DataReceived(encode_ws(WS_TEXT, b"hi")),
                DataReceived(encode_ws(WS_BINARY, b"\x00\x01")),
                DataReceived(encode_ws_close(4000, "done")),
                RemoteClosed(),
            ]
            await gateway_end.send_close()
            async with asyncio.timeout(10):
                await relay
    assert agent_end.finished and agent_end.end_reason is None
    with contextlib.suppress(Exception):
        await gateway_end.aclose()
