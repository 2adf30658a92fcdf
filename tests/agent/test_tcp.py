"""The agent's byte pump against a real loopback server, the tunnel over an in-memory wire:
signals are answered once carried out, and a target's output waits for the window."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from agent.protocols import tcp
from shared.tunnel.frames import OpenResult, SignalKind, Target
from shared.tunnel.session import Role
from shared.tunnel.stream import DataReceived, MaskReported, Opened, TunnelStream

WINDOW = 64 * 1024


class MemoryWire:
    def __init__(self, inbox: asyncio.Queue[Any], outbox: asyncio.Queue[Any]) -> None:
        self.inbox, self.outbox = inbox, outbox
        self.writes = 0

    async def read(self) -> Any:
        return await self.inbox.get()

    async def write(self, message: bytes) -> None:
        self.writes += 1
        await self.outbox.put(message)

    async def finish(self) -> None:
        await self.outbox.put(None)


async def opened_pair(acks: bool) -> tuple[TunnelStream, TunnelStream]:
    up: asyncio.Queue[Any] = asyncio.Queue()
    down: asyncio.Queue[Any] = asyncio.Queue()
    gateway = TunnelStream("s", Role.GATEWAY, MemoryWire(up, down))
    agent = TunnelStream("s", Role.AGENT, MemoryWire(down, up))
    gateway.negotiate(WINDOW, acks)
    agent.negotiate(WINDOW, acks)
    await agent.send_open_result(OpenResult(True))
    assert await gateway.receive() == Opened()
    return gateway, agent


@pytest.fixture
async def target() -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]]:
    """A loopback server that sends 1 MiB at once; the agent's connection to it."""
    blob = bytes(range(256)) * 4096
    accepted: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)
        writer.write(blob)
        await writer.drain()
        await reader.read()  # until the agent closes
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await tcp.dial(Target("t", "tcp", "127.0.0.1", port))
    try:
        yield reader, writer, blob
    finally:
        writer.close()
        server.close()
        for w in accepted:
            w.close()
        await server.wait_closed()


async def test_a_signal_is_answered_once_its_handler_has_finished(
    target: tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes],
) -> None:
    reader, writer, blob = target
    gateway, agent = await opened_pair(acks=True)
    release = asyncio.Event()
    handled: list[SignalKind] = []

    async def on_signal(kind: SignalKind) -> None:
        handled.append(kind)
        await release.wait()  # e.g. the server has not yet closed the cancel connection

    async with asyncio.TaskGroup() as tg:
        pump = tg.create_task(tcp.pump(agent, reader, writer, on_signal), name="pump")
        signal_id = await gateway.send_signal(SignalKind.CANCEL)
        waiting = tg.create_task(gateway.wait_signal_done(signal_id), name="wait")
        await asyncio.wait({waiting}, timeout=0.1)
        assert not waiting.done()  # the handler is still at work: no answer yet
        release.set()
        async with asyncio.timeout(5):
            assert await waiting
        assert handled == [SignalKind.CANCEL]
        # The answer was read past the target's output, which waits at the window.
        assert agent.bytes_out == WINDOW
        got = b""
        while len(got) < len(blob):  # the target's output was held at the window, in order
            event = await gateway.receive()
            assert isinstance(event, DataReceived)
            got += event.payload
        assert got == blob
        await gateway.send_close()
        pump.cancel()


class _CountingRewriter:
    """A `tcp.Rewriter` that passes bytes unchanged and counts each chunk as one masked
    value: what the pump does with reports, without a protocol to mask."""

    failed: str | None = None

    def __init__(self) -> None:
        self.report_due = False
        self.seen = 0

    def feed(self, data: bytes) -> bytes:
        self.seen += 1
        self.report_due = True
        return data

    def take_report(self) -> tuple[tuple[str, str, int], ...]:
        seen, self.seen, self.report_due = self.seen, 0, False
        return (("t.c", "column", seen),) if seen else ()


@pytest.mark.parametrize("in_data", [True, False])
async def test_each_report_follows_its_chunk_and_rides_in_its_frame_when_ordered(
    target: tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes], in_data: bool
) -> None:
    reader, writer, blob = target
    up: asyncio.Queue[Any] = asyncio.Queue()
    down: asyncio.Queue[Any] = asyncio.Queue()
    gateway = TunnelStream("s", Role.GATEWAY, MemoryWire(up, down))
    agent_wire = MemoryWire(down, up)
    agent = TunnelStream("s", Role.AGENT, agent_wire)
    gateway.negotiate(0, False)
    agent.negotiate(0, False, data_reports=in_data)
    await agent.send_open_result(OpenResult(True))
    assert await gateway.receive() == Opened()
    async with asyncio.TaskGroup() as tg:
        pump = tg.create_task(tcp.pump(agent, reader, writer, rewriter=_CountingRewriter()))
        got, chunks = b"", 0
        while len(got) < len(blob):
            event = await gateway.receive()
            assert isinstance(event, DataReceived)
            got += event.payload
            chunks += 1
            # Each chunk's count comes with it, or next, before any later bytes.
            if in_data:
                assert event.report == (("t.c", "column", 1),)
            else:
                assert event.report == ()
                report = await gateway.receive()
                assert report == MaskReported((("t.c", "column", 1),))
        assert got == blob
        # OpenResult, then per chunk one message (report inside) or two.
        assert agent_wire.writes == 1 + chunks * (1 if in_data else 2)
        await gateway.send_close()
        pump.cancel()
