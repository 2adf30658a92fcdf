"""TunnelStream over an in-memory wire pair: the driver logic without grpc."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from shared.pb import tunnel_pb2 as pb
from shared.tunnel.frames import MAX_PAYLOAD, OpenResult, ResetCode
from shared.tunnel.session import Role
from shared.tunnel.stream import (
    DataReceived,
    Opened,
    RemoteClosed,
    SessionClosedError,
    SessionReset,
    TunnelStream,
)


class MemoryWire:
    """One end of a pipe of serialized frames; `None` is end of stream."""

    def __init__(self, inbox: asyncio.Queue[Any], outbox: asyncio.Queue[Any]) -> None:
        self.inbox, self.outbox = inbox, outbox
        self.broken: Exception | None = None

    async def read(self) -> Any:
        if self.broken:
            raise self.broken
        return await self.inbox.get()

    async def write(self, message: bytes) -> None:
        if self.broken:
            raise self.broken
        assert isinstance(message, bytes)  # what grpc carries, without a serializer
        await self.outbox.put(message)

    async def finish(self) -> None:
        await self.outbox.put(None)


def pair() -> tuple[TunnelStream, TunnelStream, MemoryWire]:
    a_to_g: asyncio.Queue[Any] = asyncio.Queue()
    g_to_a: asyncio.Queue[Any] = asyncio.Queue()
    gw_wire = MemoryWire(a_to_g, g_to_a)
    gateway = TunnelStream("s1", Role.GATEWAY, gw_wire)
    agent = TunnelStream("s1", Role.AGENT, MemoryWire(g_to_a, a_to_g))
    return gateway, agent, gw_wire


async def test_open_data_both_ways_and_clean_close() -> None:
    gateway, agent, _ = pair()
    await agent.send_open_result(OpenResult(True))
    assert await gateway.receive() == Opened()
    await gateway.send_data(b"query")
    assert await agent.receive() == DataReceived(b"query")
    await agent.send_data(b"rows")
    await agent.send_close()
    assert await gateway.receive() == DataReceived(b"rows")
    assert await gateway.receive() == RemoteClosed()
    await gateway.send_close()
    assert await agent.receive() == RemoteClosed()
    assert gateway.finished and agent.finished
    assert gateway.end_reason is None
    assert (gateway.bytes_in, gateway.bytes_out) == (4, 5)


async def test_large_writes_are_split_into_max_payload_frames() -> None:
    gateway, agent, _ = pair()
    await agent.send_open_result(OpenResult(True))
    await gateway.receive()
    blob = bytes(range(256)) * (MAX_PAYLOAD // 256 * 2 + 3)
    await agent.send_data(blob)
    got = b""
    while len(got) < len(blob):
        event = await gateway.receive()
        assert isinstance(event, DataReceived)
        assert len(event.payload) <= MAX_PAYLOAD
        got += event.payload
    assert got == blob


async def test_reset_reaches_the_peer_and_sending_afterwards_fails() -> None:
    gateway, agent, _ = pair()
    await agent.send_open_result(OpenResult(True))
    await gateway.receive()
    await gateway.reset(ResetCode.CANCELLED, "client went away")
    event = await agent.receive()
    assert event == SessionReset(ResetCode.CANCELLED, "client went away")
    with pytest.raises(SessionClosedError):
        await agent.send_data(b"too late")


async def test_a_broken_wire_ends_the_session_with_a_reason() -> None:
    gateway, agent, gw_wire = pair()
    await agent.send_open_result(OpenResult(True))
    await gateway.receive()
    gw_wire.broken = ConnectionResetError("agent vanished")
    event = await gateway.receive()
    assert isinstance(event, SessionReset) and not event.by_peer
    assert "agent vanished" in event.message
    assert gateway.finished


async def test_end_of_stream_without_close_is_reported_as_lost() -> None:
    gateway, agent, _ = pair()
    await agent.send_open_result(OpenResult(True))
    await gateway.receive()
    await agent.aclose()  # the wire ends with no Close frame
    event = await gateway.receive()
    assert isinstance(event, SessionReset) and "without Close" in event.message


async def test_garbage_message_is_a_protocol_error_answered_with_reset() -> None:
    gateway, agent, gw_wire = pair()
    await gw_wire.inbox.put(pb.SessionFrame().SerializeToString())  # no oneof set
    event = await gateway.receive()
    assert isinstance(event, SessionReset) and event.code is ResetCode.PROTOCOL_ERROR
    reply = await agent.receive()
    assert isinstance(reply, SessionReset) and reply.code is ResetCode.PROTOCOL_ERROR


async def test_bytes_that_are_not_protobuf_are_a_protocol_error() -> None:
    gateway, agent, gw_wire = pair()
    await gw_wire.inbox.put(b"\x1a\x09\x0a\x07trunc")  # lengths promise more than arrives
    event = await gateway.receive()
    assert isinstance(event, SessionReset) and event.code is ResetCode.PROTOCOL_ERROR
    reply = await agent.receive()
    assert isinstance(reply, SessionReset) and reply.code is ResetCode.PROTOCOL_ERROR
