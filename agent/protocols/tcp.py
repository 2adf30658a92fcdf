"""Generic TCP: dial the target, then copy bytes both ways with half-close."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from shared.tunnel.frames import OpenResult, ResetCode, SignalKind, Target
from shared.tunnel.stream import (
    DataReceived,
    RemoteClosed,
    SessionClosedError,
    SessionReset,
    SignalReceived,
    TunnelStream,
)

DIAL_TIMEOUT = 10.0
READ_SIZE = 256 * 1024  # one full tunnel frame per read: fewer gRPC messages per MB
# The reader stops taking from the target past twice this: little read-ahead beyond the
# session window when the client stalls.
BUFFER_LIMIT = 64 * 1024


async def dial(target: Target) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    async with asyncio.timeout(DIAL_TIMEOUT):
        reader, writer = await asyncio.open_connection(target.host, target.port, limit=BUFFER_LIMIT)
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return reader, writer


async def serve(stream: TunnelStream, target: Target) -> None:
    try:
        reader, writer = await dial(target)
    except (OSError, TimeoutError) as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        await stream.send_open_result(
            OpenResult(
                False,
                ResetCode.TARGET_UNREACHABLE,
                f"cannot reach {target.host}:{target.port}: {reason}",
            )
        )
        return
    await stream.send_open_result(OpenResult(True))
    try:
        await pump(stream, reader, writer)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


OnSignal = Callable[[SignalKind], Coroutine[Any, Any, None]]


class Rewriter(Protocol):
    """Rewrites target -> client bytes as they stream (result masking) and reports counts."""

    failed: str | None  # set once it has refused the stream; nothing more may pass
    report_due: bool

    def feed(self, data: bytes) -> bytes: ...
    def take_report(self) -> tuple[tuple[str, str, int], ...]: ...


async def pump(
    stream: TunnelStream,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    on_signal: OnSignal | None = None,
    rewriter: Rewriter | None = None,
) -> None:
    """Copy target<->tunnel until both directions closed or the session is reset.

    Signals (e.g. a PostgreSQL cancel) go to `on_signal` in order with the data; the
    handler runs in its own task so a slow target cannot hold the byte stream, and its end
    is reported to the gateway (Signal DONE, on sessions with signal acks). With a
    `rewriter`, target bytes pass through it (and its reports follow the data they count);
    without one they are copied untouched (the measured fast path).
    """

    async def target_to_tunnel() -> None:
        try:
            while True:
                data = await reader.read(READ_SIZE)
                if not data:
                    await stream.send_close()
                    return
                await stream.send_data(data)
        except SessionClosedError:
            return
        except OSError as exc:
            await stream.reset(ResetCode.TARGET_UNREACHABLE, f"target connection failed: {exc}")

    async def target_to_tunnel_rewritten(rw: Rewriter) -> None:
        try:
            while True:
                data = await reader.read(READ_SIZE)
                if not data:
                    report = rw.take_report()
                    if report:
                        await stream.send_mask_report(report)
                    await stream.send_close()
                    return
                out = rw.feed(data)
                if out:
                    await stream.send_data(out)
                if rw.report_due or rw.failed is not None:
                    report = rw.take_report()
                    if report:
                        await stream.send_mask_report(report)
                if rw.failed is not None:
                    # The client has its error; nothing of the target may follow it.
                    await stream.reset(ResetCode.TARGET_REFUSED, rw.failed)
                    return
        except SessionClosedError:
            return
        except OSError as exc:
            await stream.reset(ResetCode.TARGET_UNREACHABLE, f"target connection failed: {exc}")

    async def tunnel_to_target() -> None:
        try:
            while True:
                event = await stream.receive()
                if isinstance(event, DataReceived):
                    writer.write(event.payload)
                    await writer.drain()
                elif isinstance(event, RemoteClosed):
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                elif isinstance(event, SignalReceived):
                    tg.create_task(carry_out(event), name=f"signal {event.kind.name}")
                elif isinstance(event, SessionReset):
                    up.cancel()
                    return
        except OSError as exc:
            await stream.reset(ResetCode.TARGET_UNREACHABLE, f"target connection failed: {exc}")
            up.cancel()

    async def carry_out(signal: SignalReceived) -> None:
        if on_signal is not None:
            await on_signal(signal.kind)
        # The gateway holds the client's cancel connection open until this answer.
        await stream.send_signal_done(signal.id)

    async with asyncio.TaskGroup() as tg:
        up = tg.create_task(
            target_to_tunnel() if rewriter is None else target_to_tunnel_rewritten(rewriter),
            name=f"tcp/{stream.session_id}/up",
        )
        tg.create_task(tunnel_to_target(), name=f"tcp/{stream.session_id}/down")
