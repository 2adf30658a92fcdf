"""`TunnelStream`: one session's gRPC stream driven by the sans-I/O `SessionState`.

The same class serves both ends. What differs (a server context on the gateway, a client
call on the agent) hides behind `Wire`.

Flow control: a session with a window (`negotiate`, rule 8 of shared.tunnel.session) runs
at most that far ahead of the receiving application. A payload `receive` handed out counts
as consumed when the application asks for the next event: every relay loop writes (and
drains) what it received before it receives again, so credit goes back only once the bytes
have moved on, and a client that stops reading stops the server within the window.
`send_data` waits for credit. gRPC's HTTP/2 windows still apply underneath, but BDP probing
grows them to megabytes, which is why the session window exists.

Whoever needs a frame reads the wire: the application in `receive`, or, while nobody
does, a sender waiting for credit or a gateway waiting for a signal's DONE (`_await`).
Frames read that way wait in order for `receive`. One wire read runs at a time (a read
lock); a waiter that must give up (a time limit) leaves its read to a task the stream owns,
since cancelling a grpc read cancels the whole call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from typing import Protocol

from shared.tasks import TaskOwner
from shared.tunnel.codec import FrameError, decode_session_bytes, encode_session_bytes
from shared.tunnel.frames import (
    MAX_PAYLOAD,
    OpenResult,
    ResetCode,
    SessionFrame,
    SignalKind,
)
from shared.tunnel.session import (
    CreditReceived,
    DataReceived,
    Event,
    LocalProtocolError,
    MaskReported,
    Opened,
    OpenFailed,
    RemoteClosed,
    Role,
    SessionReset,
    SessionState,
    SignalDone,
    SignalReceived,
)

log = logging.getLogger(__name__)

__all__ = [
    "DataReceived",
    "Event",
    "MaskReported",
    "OpenFailed",
    "Opened",
    "RemoteClosed",
    "SessionClosedError",
    "SessionReset",
    "SignalDone",
    "SignalReceived",
    "TunnelStream",
    "Wire",
    "WireBroken",
]


class SessionClosedError(Exception):
    """The session is over (reset by either end, or the tunnel was lost)."""

    def __init__(self, code: ResetCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class WireBroken(Exception):
    """A Wire's own words for why it broke (the session's end reason reads them as they are)."""


class Wire(Protocol):
    """The I/O underneath a TunnelStream: serialized SessionFrames, None at end of stream."""

    async def read(self) -> bytes | None: ...
    async def write(self, message: bytes) -> None: ...
    async def finish(self) -> None: ...


def _lost_by_other_task() -> bool:
    """True when a CancelledError came from grpc tearing the call down, not from us."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() == 0


class TunnelStream:
    def __init__(self, session_id: str, role: Role, wire: Wire) -> None:
        self.session_id = session_id
        self.state = SessionState(role)
        self._wire = wire
        self._finished = asyncio.Event()
        self._end: SessionReset | None = None
        # grpc allows one write in flight per call; a reset may race a data write.
        self._write_lock = asyncio.Lock()
        self.bytes_in = 0
        self.bytes_out = 0
        self._reading = asyncio.Lock()  # one wire read at a time
        self._pending: deque[Event] = deque()  # read by a waiter, for `receive`
        self._changed = asyncio.Event()  # credit or a DONE arrived, or a read ended
        self._unconsumed = 0  # bytes of the last DataReceived handed out
        self._done_signals: set[int] = set()
        self._helpers = TaskOwner(f"tunnel/{session_id}")
        self._reader: asyncio.Task[None] | None = None
        self._report: tuple[tuple[str, str, int], ...] = ()  # for the next send_data

    def negotiate(self, window: int, signal_acks: bool, data_reports: bool = False) -> None:
        """Flow control, signal acks and data reports as ordered in OpenSession; before the
        session opens."""
        self.state.negotiate(window, signal_acks, data_reports)

    # ---- status --------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        return self._finished.is_set()

    @property
    def end_reason(self) -> SessionReset | None:
        """Why the session ended abnormally; None while open or after a clean close."""
        return self._end

    async def wait_finished(self) -> None:
        await self._finished.wait()

    def _check_finished(self) -> None:
        if self.state.finished and not self._finished.is_set():
            self._finished.set()
            self._changed.set()

    def lost(self, message: str) -> None:
        """The gRPC stream is gone underneath us (agent or gateway vanished)."""
        if not self.state.finished:
            self.state.send_reset(ResetCode.INTERNAL, message)  # marks FINISHED; nothing sent
            self._end = SessionReset(ResetCode.INTERNAL, message, by_peer=False)
        self._finished.set()
        self._changed.set()

    # ---- receiving -----------------------------------------------------------------

    async def receive(self) -> Event:
        """The next event; after the session ended, its SessionReset (or RemoteClosed)."""
        if self._unconsumed:
            # The application asks again: it has written the last payload on.
            update = self.state.consumed(self._unconsumed)
            self._unconsumed = 0
            if update is not None:
                await self._send_quietly(update)
        while True:
            if self._pending:
                return self._hand_out(self._pending.popleft())
            if self._finished.is_set():
                # Sticky, and without reading: a dead gRPC call raises at once, and taking
                # that for news spun this loop without a turn of the event loop.
                return self._end if self._end is not None else RemoteClosed()
            async with self._reading:
                event = None if self._pending else await self._read_event()
            self._changed.set()  # a waiter may read now
            if event is not None:
                return self._hand_out(event)

    def _hand_out(self, event: Event) -> Event:
        if type(event) is DataReceived:
            self._unconsumed = len(event.payload)
        return event

    async def _read_event(self) -> Event | None:
        """Read and process one message (holding `_reading`): the event for the application,
        or None when the frame was the stream's own business (credit, a DONE) or none came."""
        if self.state.finished and self._end is not None:
            return None
        try:
            message = await self._wire.read()
        except asyncio.CancelledError:
            if not _lost_by_other_task():
                raise
            self.lost("tunnel stream cancelled")
            return None
        except Exception as exc:  # grpc raises several types when a call dies
            self.lost(f"tunnel stream lost: {_describe(exc)}")
            return None
        if message is None:
            if self.state.remote_closed and self.state.finished:
                return RemoteClosed()
            self.lost("tunnel stream ended without Close")
            return None
        try:
            frame = decode_session_bytes(message)
        except FrameError as exc:
            outcome = self.state.violation(str(exc))
        else:
            outcome = self.state.receive(frame)
        events = outcome.events
        if outcome.reply is None and len(events) == 1:
            event = events[0]
            if type(event) is DataReceived:  # the common case: no bookkeeping below
                self.bytes_in += len(event.payload)
                return event
        if outcome.reply is not None:
            await self._send_quietly(outcome.reply)
        for event in events:
            if isinstance(event, SessionReset | OpenFailed):
                self._end = (
                    event
                    if isinstance(event, SessionReset)
                    else SessionReset(event.code, event.message)
                )
            if isinstance(event, DataReceived):
                self.bytes_in += len(event.payload)
        self._check_finished()
        if not events:
            return None
        # One frame yields at most one event today; keep the contract explicit.
        event = events[0]
        if isinstance(event, CreditReceived | SignalDone):
            if isinstance(event, SignalDone):
                self._done_signals.add(event.id)
            self._changed.set()
            return None
        return event

    async def _await(self, ready: Callable[[], bool]) -> bool:
        """Wait until `ready()` (True) or the session ends (False), reading the wire while
        nobody else does. Safe to cancel: the read runs in a task of the stream's own."""
        while not ready():
            if self._finished.is_set():
                return False
            if not self._reading.locked() and (self._reader is None or self._reader.done()):
                self._reader = self._helpers.spawn(self._read_ahead(), name="read")
            self._changed.clear()
            await self._changed.wait()
        return True

    async def _read_ahead(self) -> None:
        """One read on behalf of a waiter with a time limit (see `_await`)."""
        async with self._reading:
            event = await self._read_event()
        if event is not None:
            self._pending.append(event)
        self._changed.set()

    # ---- sending -------------------------------------------------------------------

    async def _write(self, frame: SessionFrame) -> None:
        try:
            async with self._write_lock:
                await self._wire.write(encode_session_bytes(frame))
        except asyncio.CancelledError:
            if not _lost_by_other_task():
                raise
            self.lost("tunnel stream cancelled")
            raise self._closed_error() from None
        except Exception as exc:
            self.lost(f"tunnel stream lost: {_describe(exc)}")
            raise self._closed_error() from exc

    async def _send_quietly(self, frame: SessionFrame) -> None:
        with contextlib.suppress(SessionClosedError):
            await self._write(frame)

    def _closed_error(self) -> SessionClosedError:
        end = self._end or SessionReset(ResetCode.UNSPECIFIED, "session closed")
        return SessionClosedError(end.code, end.message)

    async def send_open_result(self, result: OpenResult) -> None:
        frame = self.state.send_open_result(result)
        if not result.ok:
            self._end = SessionReset(result.code, result.message, by_peer=False)
        await self._write(frame)
        self._check_finished()

    async def send_data(self, payload: bytes | bytearray | memoryview) -> None:
        state = self.state
        size = len(payload)
        if isinstance(payload, bytes) and size <= MAX_PAYLOAD and size <= state.send_credit:
            # The common case: one frame, no copy.
            if state.finished or state.local_closed:  # a close raced the data
                raise self._closed_error()
            report, self._report = self._report, ()
            await self._write(state.send_data(payload, report))
            self.bytes_out += size
            return
        view = memoryview(payload)
        start = 0
        while start < size:
            if state.send_credit <= 0:
                await self._await(lambda: state.send_credit > 0)
            if state.finished or state.local_closed:
                raise self._closed_error()
            chunk = bytes(view[start : start + min(MAX_PAYLOAD, state.send_credit)])
            last = start + len(chunk) >= size
            report, self._report = (self._report, ()) if last else ((), self._report)
            await self._write(state.send_data(chunk, report))
            self.bytes_out += len(chunk)
            start += len(chunk)

    async def send_mask_report(self, counts: tuple[tuple[str, str, int], ...]) -> None:
        if self.state.finished:
            raise self._closed_error()
        await self._write(self.state.send_mask_report(counts))

    @property
    def reports_in_data(self) -> bool:
        """The gateway reads reports inside Data (`report_with_next_data`)."""
        return self.state.data_reports

    def report_with_next_data(self, counts: tuple[tuple[str, str, int], ...]) -> None:
        """Agent, on a session with data reports: `counts` go inside the next `send_data`'s
        (last) frame, after the bytes they count; `flush_report` sends them if none follows."""
        if not self.state.data_reports or self._report:
            raise LocalProtocolError("no reports in Data here, or one waits already")
        self._report = counts

    async def flush_report(self) -> None:
        """The counts `report_with_next_data` kept, as a MaskReport frame of their own."""
        report, self._report = self._report, ()
        if report:
            await self.send_mask_report(report)

    async def send_signal(self, kind: SignalKind) -> int:
        """Send a signal; its id, for `wait_signal_done` (0 without signal acks)."""
        frame = self.state.send_signal(kind)
        await self._write(frame)
        return frame.id

    async def wait_signal_done(self, signal_id: int) -> bool:
        """True once the agent has carried out signal `signal_id`; False at once when the
        session takes no answers (no signal acks), or when it ends first. The caller sets
        the time limit (asyncio.timeout)."""
        if not self.state.signal_acks or signal_id == 0:
            return False
        try:
            return await self._await(lambda: signal_id in self._done_signals)
        finally:
            self._done_signals.discard(signal_id)

    async def send_signal_done(self, signal_id: int) -> None:
        """Agent: signal `signal_id` was carried out (nothing on a session without acks)."""
        frame = self.state.send_signal_done(signal_id)
        if frame is not None:
            await self._send_quietly(frame)

    async def send_close(self) -> None:
        frame = self.state.send_close()
        if frame is not None:
            await self._send_quietly(frame)
        self._check_finished()

    async def reset(self, code: ResetCode, message: str) -> None:
        frame = self.state.send_reset(code, message)
        if frame is not None:
            self._end = SessionReset(code, message, by_peer=False)
            await self._send_quietly(frame)
        self._finished.set()
        self._changed.set()

    def take_wire(self) -> Wire:
        """Hand this open stream's wire to a relay that carries its frames unread from now
        on (a member forwarding the session for another, gateway/fleet/forward.py): the
        peer at the far end of that relay keeps the session's state instead. This stream
        reads and writes nothing more; `lost` still ends it (its agent was found hung)."""
        if self._pending or self._unconsumed or self.state.finished:
            raise RuntimeError("take_wire: the stream has been read past its opening")
        return self._wire

    async def aclose(self) -> None:
        """Release the gRPC call; safe to call more than once."""
        await self._helpers.aclose()
        await self._wire.finish()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, WireBroken):
        return str(exc)
    details = getattr(exc, "details", None)
    if callable(details):
        text = details()
        if text:
            return str(text)
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
