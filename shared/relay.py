"""One relay driver for every front door: a peer connection <-> a TunnelStream.

Gateway side the peer is the client (a PostgreSQL connection through its session, a
WebSocket, an upgraded HTTP connection, an SSH transport); agent side it is the target. The
protocol's own framing lives in a `Peer` adapter; this module only moves bytes and decides,
in one place, how a relay ends.

Rules (each one a test in tests/shared/test_relay.py):

1. What is received is written, and flushed (`Peer.write` drains), before the next thing
   is received: the tunnel's credit goes back only once bytes have moved on, and at any
   ending everything already received has reached the peer first.
2. Half-close only where the protocol has it (`half_close=True`: TCP). There the peer's
   EOF becomes the tunnel's close, the tunnel's close becomes the peer's EOF, and the relay
   ends once both directions are closed (BOTH_CLOSED); a peer that vanishes in between
   (`Peer.wait_gone`) ends it as PEER_FAILED.
3. Without half-close, either end closing ends the session. The tunnel's close is answered
   with ours (TUNNEL_CLOSED; the caller then closes the peer). The peer's EOF is sent as our
   close, and the far end is given `close_grace` seconds to close its side; what it still
   sends has nobody to go to and is dropped (PEER_CLOSED).
4. A failing peer connection (OSError) is PEER_FAILED; a reset tunnel (the far end failed,
   the agent went away, the session was terminated) is TUNNEL_RESET with its reason, the
   reset itself given to `describe`; an adapter that refuses what passes (`Refused`: a
   frame too large, masking that cannot go on, a broken framing), or whose protocol ends
   the session itself, from either direction (PostgreSQL: a statement that could not be
   recorded, a client protocol violation, a refusal in the middle of a pipeline), is
   REFUSED. The first ending wins. What the protocol still has to say to the peer (its
   error, then end-of-file) the caller says after `relay` returns: the tunnel is over by
   then, so nothing from the far end can come after it.
5. Whatever ends the relay, the tunnel stream is finished when `relay` returns (reset with
   `failure_code` or the refusal's code when nobody closed it cleanly), also when the
   caller cancels it; cancellation is re-raised. A task inside a tunnel call is never
   cancelled while the session is open: cancelling a gRPC read cancels the whole call,
   and the far end would see a lost agent instead of our close.
6. Signals (the agent side of a PostgreSQL cancel) run in a task of the relay's, in order
   with the data, and are answered (Signal DONE) once carried out.
7. Reports the far end sends beside the data (the agent's masking counts) go to
   `on_report`, in order with the data: after the bytes they count, or, when they ride in
   the Data (`MaskReported.with_data`), just before its bytes; once the relay is decided
   they are dropped with it.
8. Each direction waits only for itself. `Peer.read` may take as long as its protocol needs
   before it has bytes for the tunnel (PostgreSQL: the judge, a durable audit record
   before a statement runs, a review while the client waits) and `Peer.write` as long as
   the peer takes to flush; the other direction keeps flowing meanwhile. An ending stops
   such a wait at once (it is not a tunnel call, rule 5): the adapter cleans up its side
   (withdraws the review) and re-raises.

`relay` returns a `RelayEnd`: who ended it, a sentence for the session record, and `error`
(None for the clean endings, BOTH_CLOSED, PEER_CLOSED and TUNNEL_CLOSED).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from shared.tunnel.frames import ResetCode, SignalKind
from shared.tunnel.stream import (
    DataReceived,
    MaskReported,
    RemoteClosed,
    SessionClosedError,
    SessionReset,
    SignalReceived,
    TunnelStream,
)

CLOSE_GRACE = 5.0  # seconds the far end has to close its side after the peer's EOF


class Ended(enum.Enum):
    BOTH_CLOSED = "both directions closed"
    PEER_CLOSED = "peer closed"
    TUNNEL_CLOSED = "far end closed"
    PEER_FAILED = "peer connection failed"
    TUNNEL_RESET = "session reset"
    REFUSED = "refused"


@dataclass(frozen=True, slots=True)
class RelayEnd:
    ended: Ended
    reason: str  # for the session record, always said
    error: str | None  # None when the relay ended cleanly
    sent: int  # bytes from the peer into the tunnel
    received: int  # bytes from the tunnel to the peer


class Refused(Exception):
    """Raised by a `Peer` adapter: what passes breaks a rule; the relay ends with REFUSED."""

    def __init__(self, message: str, code: ResetCode = ResetCode.PROTOCOL_ERROR) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class Peer(Protocol):
    """The connection on this side of the tunnel, in the protocol's own framing."""

    async def read(self) -> bytes | None:
        """The next bytes from the peer (b"" is skipped); None at its end of stream."""
        ...

    async def write(self, data: bytes) -> None:
        """Write to the peer and flush (drain)."""
        ...

    async def write_eof(self) -> None:
        """Half-close toward the peer; called only with `half_close=True`."""
        ...

    async def wait_gone(self) -> None:
        """Return once the peer has gone entirely (after its EOF); a socket cannot tell,
        so it never returns."""
        ...


OnSignal = Callable[[SignalKind], Coroutine[Any, Any, None]]
OnReport = Callable[[MaskReported], Coroutine[Any, Any, None]]
Describe = Callable[[SessionReset], str]


def _message(end: SessionReset) -> str:
    return end.message


class _Relay:
    def __init__(
        self,
        stream: TunnelStream,
        peer: Peer,
        half_close: bool,
        failure_code: ResetCode,
        describe: Describe,
        on_signal: OnSignal | None,
        on_report: OnReport | None,
        who: str,
    ) -> None:
        self.who = who
        self.on_report = on_report
        self.stream = stream
        self.peer = peer
        self.half_close = half_close
        self.describe = describe
        self.on_signal = on_signal
        self.sent = 0
        self.received = 0
        self.peer_eof = False
        self.tunnel_eof = False
        self.end: tuple[Ended, str, str | None] | None = None
        self.code = failure_code  # of the reset when the ending leaves the stream open
        self.decided = asyncio.Event()
        self.tasks: set[asyncio.Task[None]] = set()
        # Tasks inside a tunnel call. Cancelling a gRPC read or write cancels the whole
        # call, so they are cancelled only once the session is over (see `finish`).
        self.in_tunnel: set[asyncio.Task[Any]] = set()
        self.down: asyncio.Task[None] | None = None

    @contextlib.contextmanager
    def tunnel_call(self) -> Iterator[None]:
        task = asyncio.current_task()
        assert task is not None
        self.in_tunnel.add(task)
        try:
            yield
        finally:
            self.in_tunnel.discard(task)

    def decide(self, ended: Ended, reason: str, error: str | None = None) -> None:
        """The first ending wins. Tasks waiting on the peer stop at once; a task inside a
        tunnel call stops after it, or in `finish`."""
        if self.end is not None:
            return
        self.end = (ended, reason, error)
        self.decided.set()
        me = asyncio.current_task()
        # After the peer's EOF `down` goes on to see the far end's close (`finish`).
        keep = {me, self.down} if ended is Ended.PEER_CLOSED else {me}
        for task in self.tasks - keep - self.in_tunnel:
            task.cancel()

    def failed(self, exc: OSError) -> None:
        text = f"{self.who} connection failed: {str(exc) or type(exc).__name__}"
        self.decide(Ended.PEER_FAILED, text, text)

    def refused(self, exc: Refused) -> None:
        if self.end is None:
            self.code = exc.code
        self.decide(Ended.REFUSED, exc.message, exc.message)

    async def up(self) -> None:
        """Peer -> tunnel."""
        # `tunnel_call` inlined on the two per-message calls: a context manager there cost
        # more CPU per round trip than the rest of the relay's own work.
        me, in_tunnel, send = asyncio.current_task(), self.in_tunnel, self.stream.send_data
        assert me is not None
        try:
            while (data := await self.peer.read()) is not None:
                if data:
                    in_tunnel.add(me)
                    try:
                        await send(data)
                    finally:
                        in_tunnel.discard(me)
                    self.sent += len(data)
                if self.end is not None:
                    return
            with self.tunnel_call():
                await self.stream.send_close()
            self.peer_eof = True  # only now: `down` may decide BOTH_CLOSED at once
            if not self.half_close:
                self.decide(Ended.PEER_CLOSED, f"the {self.who} closed the connection")
            elif self.tunnel_eof:
                self.decide(Ended.BOTH_CLOSED, "both sides closed the connection")
            else:
                await self.peer.wait_gone()
                gone = f"the {self.who} went away"
                self.decide(Ended.PEER_FAILED, gone, gone)
        except OSError as exc:
            self.failed(exc)
        except Refused as exc:
            self.refused(exc)
        except SessionClosedError:
            pass  # the tunnel ended: `down` receives its reset and says why

    async def down_loop(self, tg: asyncio.TaskGroup) -> None:
        """Tunnel -> peer; once the relay is decided (the peer's EOF without half-close),
        it only waits for the far end's close, dropping what still comes."""
        me, in_tunnel, receive = asyncio.current_task(), self.in_tunnel, self.stream.receive
        assert me is not None
        try:
            while True:
                in_tunnel.add(me)
                try:
                    event = await receive()
                finally:
                    in_tunnel.discard(me)
                draining = self.end is not None
                if isinstance(event, DataReceived):
                    if draining:
                        continue  # the peer has gone: nobody to take it
                    if event.report and self.on_report is not None:
                        await self.on_report(MaskReported(event.report, with_data=True))
                    try:
                        await self.peer.write(event.payload)
                    except SessionClosedError:
                        continue  # an adapter answering on the tunnel: the next event says why
                    self.received += len(event.payload)
                elif isinstance(event, RemoteClosed):
                    if draining or self.tunnel_eof:
                        # Once the stream is over every receive answers RemoteClosed at
                        # once, without a turn of the loop: looping on it starved `up`,
                        # which decides BOTH_CLOSED after its own close is sent.
                        return
                    if not self.half_close:
                        self.decide(Ended.TUNNEL_CLOSED, "the far end closed the session")
                        with self.tunnel_call():
                            await self.stream.send_close()
                        return
                    await self.peer.write_eof()
                    self.tunnel_eof = True
                    if self.peer_eof:
                        self.decide(Ended.BOTH_CLOSED, "both sides closed the connection")
                        return
                elif isinstance(event, SessionReset):
                    text = self.describe(event)
                    self.decide(Ended.TUNNEL_RESET, text, text)
                    return
                elif isinstance(event, SignalReceived) and not draining:
                    self.spawn(tg, self.carry_out(event), f"signal {event.kind.name}")
                elif isinstance(event, MaskReported) and self.on_report and not draining:
                    await self.on_report(event)
        except OSError as exc:
            self.failed(exc)
        except Refused as exc:
            self.refused(exc)

    def spawn(
        self, tg: asyncio.TaskGroup, coro: Coroutine[Any, Any, None], name: str
    ) -> asyncio.Task[None]:
        task = tg.create_task(coro, name=name)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def carry_out(self, signal: SignalReceived) -> None:
        if self.on_signal is not None:
            await self.on_signal(signal.kind)
        # The gateway holds the client's cancel connection open until this answer.
        with self.tunnel_call():
            await self.stream.send_signal_done(signal.id)

    async def finish(self, grace: float) -> None:
        """After the decision: give the far end `grace` to close (PEER_CLOSED), reset the
        session if it is still open, then stop what is left: a finished stream is safe to
        abandon, and a write on it returns at once."""
        assert self.end is not None and self.down is not None
        ended, reason, error = self.end
        if ended is Ended.PEER_CLOSED and not self.stream.finished and not self.down.done():
            await asyncio.wait({self.down}, timeout=grace)
        if not self.stream.finished:
            await self.stream.reset(self.code, error or reason)
        elif self.stream.end_reason is None and not self.down.done():
            # A clean end, and `down` is inside a read. Cancelling it cancels the gRPC call,
            # and writes not yet on the wire (our last data, our Close) were lost with it:
            # 1 in 4 echoed 300 kB lost its tail. Say we are done writing instead; the far
            # end then ends the call, and the read returns.
            await self.stream.aclose()
            await asyncio.wait({self.down}, timeout=grace)
        for task in self.tasks:
            if not task.done():
                task.cancel()


async def relay(
    stream: TunnelStream,
    peer: Peer,
    *,
    half_close: bool,
    name: str,
    who: str = "peer",
    failure_code: ResetCode = ResetCode.CANCELLED,
    describe: Describe = _message,
    on_signal: OnSignal | None = None,
    on_report: OnReport | None = None,
    close_grace: float = CLOSE_GRACE,
) -> RelayEnd:
    """Relay until the session ends (rules in the module docstring); why it ended.

    `who` names the peer in the reasons ("client", "target"); `describe` words a reset
    of the tunnel for the peer's side (the gateway names the agent at fault)."""
    r = _Relay(stream, peer, half_close, failure_code, describe, on_signal, on_report, who)
    try:
        async with asyncio.TaskGroup() as tg:
            r.spawn(tg, r.up(), f"{name}/up")
            r.down = r.spawn(tg, r.down_loop(tg), f"{name}/down")
            await r.decided.wait()
            await r.finish(close_grace)
    finally:
        if not stream.finished:  # cancelled, or a bug: the far end is told all the same
            why = r.end[1] if r.end is not None else "relay ended"
            await asyncio.shield(stream.reset(r.code, why))
    assert r.end is not None
    ended, reason, error = r.end
    return RelayEnd(ended, reason, error, r.sent, r.received)


class StreamPeer:
    """An asyncio stream pair as a `Peer` (plain TCP, a TLS connection after an upgrade)."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, read_size: int
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.read_size = read_size

    async def read(self) -> bytes | None:
        return await self.reader.read(self.read_size) or None

    async def write(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def write_eof(self) -> None:
        if self.writer.can_write_eof():
            self.writer.write_eof()
        else:
            # TLS cannot half-close: the far end's EOF is the connection's end.
            self.writer.close()

    async def wait_gone(self) -> None:
        await asyncio.Event().wait()  # a socket's leaving shows only as a failed write
