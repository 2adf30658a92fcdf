"""The relay driver's ending rules (shared/relay.py), a scripted peer on one side and the
far end of an in-memory tunnel on the other: every ending, no sockets."""

from __future__ import annotations

import asyncio

import pytest

from shared.relay import Ended, Refused, RelayEnd, relay
from shared.tunnel.frames import ResetCode
from shared.tunnel.stream import (
    DataReceived,
    MaskReported,
    RemoteClosed,
    SessionReset,
    TunnelStream,
)
from tests.fixtures.tunnel import opened_pair, wire_of


class ScriptedPeer:
    """What the peer sends is queued by the test (bytes, None for EOF, an exception to
    raise); what it is written is kept, with its EOF."""

    def __init__(self) -> None:
        self.inbox: asyncio.Queue[bytes | Exception | None] = asyncio.Queue()
        self.written = bytearray()
        self.wrote = asyncio.Event()
        self.eof = False
        self.gone = asyncio.Event()
        self.refuse: bytes | None = None  # a write of these bytes raises Refused

    async def read(self) -> bytes | None:
        item = await self.inbox.get()
        if isinstance(item, Exception):
            raise item
        return item

    async def write(self, data: bytes) -> None:
        if self.refuse is not None and data == self.refuse:
            raise Refused("frame too large", ResetCode.TARGET_REFUSED)
        await asyncio.sleep(0)  # a flush that takes a turn of the loop
        self.written += data
        self.wrote.set()

    async def write_eof(self) -> None:
        self.eof = True

    async def wait_gone(self) -> None:
        await self.gone.wait()


async def far_events(far: TunnelStream, n: int) -> list[object]:
    return [await far.receive() for _ in range(n)]


async def start(
    peer: ScriptedPeer, *, half_close: bool, close_grace: float = 5.0
) -> tuple[asyncio.Task[RelayEnd], TunnelStream, TunnelStream]:
    near, far = await opened_pair()
    task = asyncio.create_task(  # noqa: TID251 (awaited by every test)
        relay(
            near,
            peer,
            half_close=half_close,
            name="test",
            describe=lambda end: f"described: {end.message}",
            close_grace=close_grace,
        )
    )
    return task, near, far


async def test_half_close_carries_each_eof_and_ends_when_both_directions_closed() -> None:
    peer = ScriptedPeer()
    task, near, far = await start(peer, half_close=True)
    peer.inbox.put_nowait(b"ping")
    peer.inbox.put_nowait(None)
    assert await far_events(far, 2) == [DataReceived(b"ping"), RemoteClosed()]
    # The other direction stays open after the peer's EOF.
    await far.send_data(b"pong")
    await far.send_close()
    end = await task
    assert (end.ended, end.error, end.sent, end.received) == (Ended.BOTH_CLOSED, None, 4, 4)
    assert (bytes(peer.written), peer.eof) == (b"pong", True)
    assert near.finished and near.end_reason is None
    assert wire_of(near).cancelled_reads == 0  # a gRPC call would have been cancelled


async def test_closes_that_cross_end_the_relay_once() -> None:
    """The far end's Close crosses ours while ours is being written: the stream is then
    over and every receive answers RemoteClosed at once, as a gRPC read after the call's
    end does. The relay spun on that without yielding, and the agent's loop stalled (no
    pings: "every agent of pool 'default' was lost")."""
    peer = ScriptedPeer()
    eofs = 0

    async def write_eof() -> None:
        nonlocal eofs
        eofs += 1
        assert eofs == 1, "the far end's EOF was carried twice: the relay is spinning"
        peer.eof = True

    peer.write_eof = write_eof  # type: ignore[method-assign]
    near, far = await opened_pair()
    wire = wire_of(near)
    write, read = wire.write, wire.read
    ended = False

    async def slow_write(message: bytes) -> None:
        for _ in range(5):
            await asyncio.sleep(0)  # a write that takes turns of the loop, as gRPC's do
        await write(message)

    async def sticky_read() -> object:
        nonlocal ended
        if ended:
            return None  # gRPC: a read after the end of the call returns at once
        message = await read()
        ended = message is None
        return message

    wire.write, wire.read = slow_write, sticky_read  # type: ignore[method-assign]
    await far.send_close()
    await wire_of(far).finish()
    peer.inbox.put_nowait(None)
    end = await relay(near, peer, half_close=True, name="test", describe=lambda e: e.message)
    assert (end.ended, end.error, eofs) == (Ended.BOTH_CLOSED, None, 1)


async def test_half_close_peer_that_vanishes_after_its_eof_ends_the_relay() -> None:
    peer = ScriptedPeer()
    task, _, far = await start(peer, half_close=True)
    peer.inbox.put_nowait(None)
    assert await far.receive() == RemoteClosed()
    peer.gone.set()
    end = await task
    assert (end.ended, end.error) == (Ended.PEER_FAILED, "the peer went away")
    reset = await far.receive()
    assert isinstance(reset, SessionReset) and reset.code is ResetCode.CANCELLED


async def test_without_half_close_the_far_ends_close_ends_it_after_all_was_flushed() -> None:
    peer = ScriptedPeer()
    task, near, far = await start(peer, half_close=False)
    for chunk in (b"one ", b"two ", b"three"):
        await far.send_data(chunk)
    await far.send_close()
    end = await task
    assert (end.ended, end.error) == (Ended.TUNNEL_CLOSED, None)
    assert end.reason == "the far end closed the session"
    assert bytes(peer.written) == b"one two three"
    assert not peer.eof  # no half-close: the caller closes the peer
    # Our close answers theirs: the far end sees a clean end, not a reset.
    assert await far.receive() == RemoteClosed()
    assert near.end_reason is None
    assert wire_of(near).cancelled_reads == 0


async def test_without_half_close_the_peers_eof_waits_for_the_far_end_to_close() -> None:
    peer = ScriptedPeer()
    task, near, far = await start(peer, half_close=False)
    await far.send_data(b"hello")
    async with asyncio.timeout(5):
        await peer.wrote.wait()  # delivered: the relay reads the tunnel again
    peer.inbox.put_nowait(b"bye")
    peer.inbox.put_nowait(None)
    assert await far_events(far, 2) == [DataReceived(b"bye"), RemoteClosed()]
    await far.send_data(b"late")  # nobody to take it: dropped
    await far.send_close()
    end = await task
    assert (end.ended, end.error) == (Ended.PEER_CLOSED, None)
    assert bytes(peer.written) == b"hello"
    assert near.finished and near.end_reason is None
    assert wire_of(near).cancelled_reads == 0


async def test_a_far_end_that_never_closes_is_reset_after_the_grace() -> None:
    peer = ScriptedPeer()
    task, _, far = await start(peer, half_close=False, close_grace=0.05)
    peer.inbox.put_nowait(None)
    assert await far.receive() == RemoteClosed()
    end = await task
    assert end.ended is Ended.PEER_CLOSED
    reset = await far.receive()
    assert isinstance(reset, SessionReset) and reset.message == "the peer closed the connection"


async def test_a_reset_far_end_is_reported_with_its_reason() -> None:
    peer = ScriptedPeer()
    task, _, far = await start(peer, half_close=True)
    await far.send_data(b"partial")
    await far.reset(ResetCode.TARGET_UNREACHABLE, "server restarted")
    end = await task
    assert (end.ended, end.error) == (Ended.TUNNEL_RESET, "described: server restarted")
    assert bytes(peer.written) == b"partial"  # what came before the reset was delivered


async def test_a_failing_peer_resets_the_session_with_the_failure_code() -> None:
    peer = ScriptedPeer()
    task, _, far = await start(peer, half_close=True)
    peer.inbox.put_nowait(ConnectionResetError("connection reset by peer"))
    end = await task
    failed = "peer connection failed: connection reset by peer"
    assert (end.ended, end.error) == (Ended.PEER_FAILED, failed)
    reset = await far.receive()
    assert isinstance(reset, SessionReset)
    assert (reset.code, reset.message) == (ResetCode.CANCELLED, failed)


async def test_a_refusal_ends_the_relay_with_its_own_reset_code() -> None:
    peer = ScriptedPeer()
    peer.refuse = b"huge"
    task, _, far = await start(peer, half_close=True)
    await far.send_data(b"huge")
    end = await task
    assert (end.ended, end.error) == (Ended.REFUSED, "frame too large")
    reset = await far.receive()
    assert isinstance(reset, SessionReset) and reset.code is ResetCode.TARGET_REFUSED


async def test_the_first_ending_wins() -> None:
    peer = ScriptedPeer()
    task, _, far = await start(peer, half_close=False)
    await far.send_close()
    assert await far.receive() == RemoteClosed()  # decided: our close answered theirs
    peer.inbox.put_nowait(OSError("late failure"))
    end = await task
    assert end.ended is Ended.TUNNEL_CLOSED


async def test_a_cancelled_relay_resets_the_session_and_reraises() -> None:
    peer = ScriptedPeer()
    task, near, far = await start(peer, half_close=True)
    peer.inbox.put_nowait(b"x")
    assert await far.receive() == DataReceived(b"x")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert near.finished
    assert isinstance(await far.receive(), SessionReset)


async def test_reports_reach_on_report_in_order_with_the_data() -> None:
    """Rule 7: the agent's masking counts come beside the data, and are seen in its order."""
    peer = ScriptedPeer()
    seen: list[object] = []

    async def on_report(event: MaskReported) -> None:
        seen.append((event.counts, bytes(peer.written)))

    near, far = await opened_pair()
    task = asyncio.create_task(  # noqa: TID251 (awaited below)
        relay(near, peer, half_close=False, name="test", on_report=on_report)
    )
    await far.send_data(b"row 1 ")
    await far.send_mask_report((("email", "email", 1),))
    await far.send_data(b"row 2")
    await far.send_close()
    end = await task
    assert end.ended is Ended.TUNNEL_CLOSED
    assert seen == [((("email", "email", 1),), b"row 1 ")]
    assert bytes(peer.written) == b"row 1 row 2"


async def test_the_peers_protocol_ending_the_session_is_a_refusal_from_either_side() -> None:
    """Rule 4: PostgreSQL's session ends itself on the client's side (a statement that could
    not be recorded): the relay ends at once, the tunnel is reset with the refusal's code and
    message, and the caller says the protocol's last words afterwards."""
    peer = ScriptedPeer()
    task, near, far = await start(peer, half_close=False)
    peer.inbox.put_nowait(b"earlier")
    assert await far.receive() == DataReceived(b"earlier")
    peer.inbox.put_nowait(Refused("statement not run: audit log unavailable", ResetCode.CANCELLED))
    end = await task
    assert (end.ended, end.error) == (Ended.REFUSED, "statement not run: audit log unavailable")
    reset = await far.receive()
    assert isinstance(reset, SessionReset)
    assert (reset.code, reset.message) == (
        ResetCode.CANCELLED,
        "statement not run: audit log unavailable",
    )
    assert near.finished and near.end_reason is not None


async def test_a_read_that_waits_keeps_the_other_direction_flowing_and_an_ending_cancels_it() -> (
    None
):
    """Rule 8: the peer's side waits (a statement held for review) while the server's answers
    still reach the peer; the far end's close ends the relay, and the wait is cancelled so
    that the adapter withdraws what it waits for."""
    peer = ScriptedPeer()
    waiting = asyncio.Event()
    withdrawn = asyncio.Event()

    async def held_read() -> bytes | None:
        waiting.set()
        try:
            await asyncio.Event().wait()  # the review nobody decides
        except asyncio.CancelledError:
            withdrawn.set()
            raise
        return None

    peer.read = held_read  # type: ignore[method-assign]
    task, _, far = await start(peer, half_close=False)
    async with asyncio.timeout(5):
        await waiting.wait()
    await far.send_data(b"NOTICE: held")
    async with asyncio.timeout(5):
        await peer.wrote.wait()
    await far.send_close()
    end = await task
    assert (end.ended, bytes(peer.written)) == (Ended.TUNNEL_CLOSED, b"NOTICE: held")
    assert withdrawn.is_set()
