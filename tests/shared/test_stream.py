"""TunnelStream over an in-memory wire pair: the driver logic without grpc."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from shared.pb import tunnel_pb2 as pb
from shared.tunnel.frames import MAX_PAYLOAD, OpenResult, ResetCode, SignalKind
from shared.tunnel.session import Role
from shared.tunnel.stream import (
    DataReceived,
    Opened,
    RemoteClosed,
    SessionClosedError,
    SessionReset,
    SignalReceived,
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


class ReadAfterTheEnd(BaseException):
    """Not an Exception: the stream's own handler must not swallow it."""


async def test_a_cleanly_finished_stream_answers_remote_closed_without_reading() -> None:
    """After both Close frames every receive says RemoteClosed at once. It read the wire
    again, and a dead gRPC call raises at once: the stream took that for a loss it had
    nothing to record, and looped without a turn of the loop (a gateway stalled)."""
    gateway, agent, gw_wire = pair()
    await agent.send_open_result(OpenResult(True))
    assert await gateway.receive() == Opened()
    await agent.send_close()
    await gateway.send_close()
    assert await gateway.receive() == RemoteClosed()
    assert gateway.finished and gateway.end_reason is None
    reads = 0

    async def dead_call() -> Any:
        nonlocal reads
        reads += 1
        if reads > 3:
            raise ReadAfterTheEnd("receive keeps reading a finished stream")
        raise RuntimeError("the call is over")

    gw_wire.read = dead_call  # type: ignore[method-assign]
    assert [await gateway.receive() for _ in range(3)] == [RemoteClosed()] * 3
    assert reads == 0 and gateway.end_reason is None


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


# ---- flow control and signal answers ---------------------------------------------------

WINDOW = 1024


async def windowed_pair(acks: bool = False) -> tuple[TunnelStream, TunnelStream, MemoryWire]:
    gateway, agent, gw_wire = pair()
    gateway.negotiate(WINDOW, acks)
    agent.negotiate(WINDOW, acks)
    await agent.send_open_result(OpenResult(True))
    assert await gateway.receive() == Opened()
    return gateway, agent, gw_wire


async def test_a_sender_stops_one_window_ahead_of_a_receiver_that_does_not_consume() -> None:
    gateway, agent, _ = await windowed_pair()
    blob = bytes(range(256)) * 16  # four windows
    async with asyncio.TaskGroup() as tg:
        sending = tg.create_task(agent.send_data(blob), name="send")
        # A memory wire never blocks: the sender still waiting is waiting for credit.
        await asyncio.wait({sending}, timeout=0.05)
        assert agent.bytes_out == WINDOW and not sending.done()
        got = b""
        while len(got) < len(blob):
            event = await gateway.receive()  # each call consumes the one before: credit flows
            assert isinstance(event, DataReceived)
            got += event.payload
            assert agent.bytes_out - len(got) <= WINDOW  # never more than a window in flight
    assert got == blob


async def test_credit_reaches_a_sender_whose_application_no_longer_receives() -> None:
    gateway, agent, _ = await windowed_pair()
    await gateway.send_close()
    assert await agent.receive() == RemoteClosed()  # the agent's pump stops receiving here
    blob = b"r" * (3 * WINDOW)
    got = b""
    async with asyncio.TaskGroup() as tg:
        tg.create_task(agent.send_data(blob), name="send")  # reads its credit frames itself
        while len(got) < len(blob):
            event = await gateway.receive()
            assert isinstance(event, DataReceived)
            got += event.payload
    assert got == blob


async def test_a_signal_answer_is_read_past_data_the_application_has_not_taken() -> None:
    gateway, agent, _ = await windowed_pair(acks=True)
    await agent.send_data(b"d" * WINDOW)  # a full window, unread by the gateway's application
    signal_id = await gateway.send_signal(SignalKind.CANCEL)
    event = await agent.receive()
    assert event == SignalReceived(SignalKind.CANCEL, signal_id)
    await agent.send_signal_done(signal_id)
    async with asyncio.timeout(5):
        assert await gateway.wait_signal_done(signal_id)
    assert await gateway.receive() == DataReceived(b"d" * WINDOW)  # still there, in order


async def test_giving_up_on_a_signal_answer_leaves_the_stream_working() -> None:
    gateway, agent, _ = await windowed_pair(acks=True)
    signal_id = await gateway.send_signal(SignalKind.CANCEL)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await gateway.wait_signal_done(signal_id)
    await agent.send_data(b"after")
    assert await gateway.receive() == DataReceived(b"after")
    assert not gateway.finished


async def test_without_signal_acks_nobody_waits_for_an_answer() -> None:
    gateway, agent, _ = await windowed_pair(acks=False)
    signal_id = await gateway.send_signal(SignalKind.CANCEL)
    assert signal_id == 0 and not await gateway.wait_signal_done(signal_id)
    assert await agent.receive() == SignalReceived(SignalKind.CANCEL, 0)
    await agent.send_signal_done(0)  # nothing is sent
    await agent.send_data(b"x")
    assert await gateway.receive() == DataReceived(b"x")
