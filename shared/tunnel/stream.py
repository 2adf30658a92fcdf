"""`TunnelStream`: one session's gRPC stream driven by the sans-I/O `SessionState`.

The same class serves both ends. What differs (a server context on the gateway, a client
call on the agent) hides behind `Wire`. Flow control is grpc's: `write` waits while the
stream's HTTP/2 window is full, and a reader that stops calling `receive` stops the peer,
so memory is bounded per session and a stalled session never stalls another.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol

from shared.tunnel.codec import FrameError, decode_session_bytes, encode_session_bytes
from shared.tunnel.frames import (
    MAX_PAYLOAD,
    OpenResult,
    ResetCode,
    SessionFrame,
    SignalKind,
)
from shared.tunnel.session import (
    DataReceived,
    Event,
    MaskReported,
    Opened,
    OpenFailed,
    RemoteClosed,
    Role,
    SessionReset,
    SessionState,
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
    "SignalReceived",
    "TunnelStream",
    "Wire",
]


class SessionClosedError(Exception):
    """The session is over (reset by either end, or the tunnel was lost)."""

    def __init__(self, code: ResetCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


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

    def lost(self, message: str) -> None:
        """The gRPC stream is gone underneath us (agent or gateway vanished)."""
        if not self.state.finished:
            self.state.send_reset(ResetCode.INTERNAL, message)  # marks FINISHED; nothing sent
            self._end = SessionReset(ResetCode.INTERNAL, message, by_peer=False)
        self._finished.set()

    # ---- receiving -----------------------------------------------------------------

    async def receive(self) -> Event:
        """The next event; after the session ended, its SessionReset (or RemoteClosed)."""
        while True:
            if self.state.finished and self._end is not None:
                return self._end
            try:
                message = await self._wire.read()
            except asyncio.CancelledError:
                if not _lost_by_other_task():
                    raise
                self.lost("tunnel stream cancelled")
                continue
            except Exception as exc:  # grpc raises several types when a call dies
                self.lost(f"tunnel stream lost: {_describe(exc)}")
                continue
            if message is None:
                if self.state.remote_closed and self.state.finished:
                    return RemoteClosed()
                self.lost("tunnel stream ended without Close")
                continue
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
            if outcome.events:
                # One frame yields at most one event today; keep the contract explicit.
                return outcome.events[0]

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
        if isinstance(payload, bytes) and len(payload) <= MAX_PAYLOAD:
            # The common case: one frame, no copy.
            if self.state.finished:
                raise self._closed_error()
            await self._write(self.state.send_data(payload))
            self.bytes_out += len(payload)
            return
        view = memoryview(payload)
        for start in range(0, len(view), MAX_PAYLOAD):
            if self.state.finished:
                raise self._closed_error()
            chunk = bytes(view[start : start + MAX_PAYLOAD])
            await self._write(self.state.send_data(chunk))
            self.bytes_out += len(chunk)

    async def send_mask_report(self, counts: tuple[tuple[str, str, int], ...]) -> None:
        if self.state.finished:
            raise self._closed_error()
        await self._write(self.state.send_mask_report(counts))

    async def send_signal(self, kind: SignalKind) -> None:
        await self._write(self.state.send_signal(kind))

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

    async def aclose(self) -> None:
        """Release the gRPC call; safe to call more than once."""
        await self._wire.finish()


def _describe(exc: BaseException) -> str:
    details = getattr(exc, "details", None)
    if callable(details):
        text = details()
        if text:
            return str(text)
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
