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
from shared.relay import relay as relay_bytes

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
    "draining": 4503,
}


class _WebSocketPeer:
    """The CLI's WebSocket as a relay peer: binary messages are bytes, an empty one is EOF."""

    def __init__(self, ws: WebSocket) -> None:
        self.ws = ws

    async def read(self) -> bytes | None:
        while True:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                raise ConnectionResetError("the client went away")
            data = message.get("bytes")
            if data is None:
                continue  # text frames carry nothing in this protocol
            return data or None

    async def write(self, data: bytes) -> None:
        try:
            await self.ws.send_bytes(data)
        except (WebSocketDisconnect, RuntimeError) as exc:
            raise ConnectionResetError(f"the client went away ({exc})") from exc

    async def write_eof(self) -> None:
        await self.write(b"")

    async def wait_gone(self) -> None:
        # After its EOF the CLI sends nothing more; what still comes is its leaving.
        while (await self.ws.receive())["type"] != "websocket.disconnect":
            pass


async def relay(ws: WebSocket, broker: SessionBroker, session: Session) -> None:
    """Bytes both ways with half-close (shared/relay.py) until the session ends."""
    error: str | None = "relay ended"
    try:
        end = await relay_bytes(
            session.stream,
            _WebSocketPeer(ws),
            half_close=True,
            name=f"tcp/{session.id}",
            who="client",
            describe=session.describe_end,
        )
        error = end.error
    finally:
        # Shielded: a cancelled handler still records the session's end.
        await asyncio.shield(broker.finish(session, error=error))
    with contextlib.suppress(Exception):
        if error is None:
            await ws.close(1000)
        else:
            await ws.close(4502, reason=error[:120])
