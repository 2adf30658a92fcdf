"""Generic TCP over a WebSocket: the gateway half of `wardgate tcp`.

The CLI carries each local TCP connection in one WebSocket (an HTTP upgrade on the public
endpoint, so it crosses proxies and load balancers). Binary messages are stream bytes; an
EMPTY binary message is end-of-stream in that direction (TCP half-close), which WebSocket
has no frame for. The session ends with close code 1000, or with an application close code
and a reason the CLI prints:

    4401 unauthenticated   4403 forbidden   4404 unknown connection   4409 wrong type
    4502 target unreachable or tunnel failure   4503 no agent for the pool
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from starlette.websockets import WebSocket, WebSocketDisconnect

from gateway.sessions import Session, SessionBroker
from shared.tunnel.frames import ResetCode
from shared.tunnel.stream import (
    DataReceived,
    RemoteClosed,
    SessionClosedError,
    SessionReset,
)

log = logging.getLogger(__name__)

CLOSE_CODES = {
    "unauthenticated": 4401,
    "rate_limited": 4429,  # too many refused credentials from the address
    "forbidden": 4403,
    "unknown_connection": 4404,
    "wrong_type": 4409,
    "unreachable": 4502,
    "agent_lost": 4502,
    "unsupported": 4502,
    "no_agent": 4503,
    "unavailable": 4503,
}


async def relay(ws: WebSocket, broker: SessionBroker, session: Session) -> None:
    """Pump bytes both ways until both directions closed or either side failed."""
    stream = session.stream
    error: str | None = None

    async def client_to_agent() -> None:
        try:
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    if not stream.state.local_closed:
                        await stream.reset(ResetCode.CANCELLED, "client went away")
                        down.cancel()
                    return
                data = message.get("bytes")
                if data is None:
                    continue  # text frames carry nothing in this protocol
                if not data:
                    await stream.send_close()
                    return
                await stream.send_data(data)
        except SessionClosedError:
            return

    async def agent_to_client() -> str | None:
        while True:
            event = await stream.receive()
            if isinstance(event, DataReceived):
                await ws.send_bytes(event.payload)
            elif isinstance(event, RemoteClosed):
                await ws.send_bytes(b"")
                return None
            elif isinstance(event, SessionReset):
                return session.describe_end(event)

    try:
        async with asyncio.TaskGroup() as tg:
            down = tg.create_task(agent_to_client(), name=f"tcp/{session.id}/down")
            up = tg.create_task(client_to_agent(), name=f"tcp/{session.id}/up")
            try:
                error = await down
            except asyncio.CancelledError:
                me = asyncio.current_task()
                if me is not None and me.cancelling():
                    raise
                error = "client went away"
            if error is not None:
                up.cancel()
    except* (WebSocketDisconnect, OSError) as group:
        error = f"client connection failed: {group.exceptions[0]}"
    finally:
        if not stream.finished:
            await stream.reset(ResetCode.CANCELLED, error or "relay ended")
        await broker.finish(session, error=error)
    with contextlib.suppress(Exception):
        if error is None:
            await ws.close(1000)
        else:
            await ws.close(4502, reason=error[:120])
