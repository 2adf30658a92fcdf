"""Serve one accepted stream with hypercorn (HTTP/1.1 and HTTP/2, WebSockets over both).

hypercorn normally owns its listening sockets; the front door owns ours, so each
decrypted connection is handed to hypercorn's per-connection server.

A connection counts as authenticated at the front door (gateway/frontdoor.py) once its first
request has arrived: the API authenticates each request itself, so what the front door bounds
is a client that never gets a request through (a slowloris on TLS or on the request head).

Cancelled (the gateway stopping), hypercorn's server closes its stream and waits for the
close to complete; over TLS that waits for the peer, which an idle keep-alive client never
answers. The connection is therefore aborted first, so shutdown does not wait on clients.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, cast

from hypercorn.asyncio.tcp_server import TCPServer
from hypercorn.asyncio.worker_context import WorkerContext
from hypercorn.config import Config
from hypercorn.utils import wrap_app

from gateway.frontdoor import StreamHandler, authenticated
from shared.kubeapi import UpgradeRequest, parse_upgrade

SNIFF_TIMEOUT = 10.0
UpgradeHandler = Callable[
    [UpgradeRequest, asyncio.StreamReader, asyncio.StreamWriter, str], Awaitable[None]
]


async def _first_head(reader: asyncio.StreamReader) -> bytes | None:
    """The first request head, consumed; None when none came (whole) in time, in which case
    nothing was consumed: a too-long head stays buffered for hypercorn to refuse."""
    try:
        async with asyncio.timeout(SNIFF_TIMEOUT):
            return await reader.readuntil(b"\r\n\r\n")
    except (asyncio.LimitOverrunError, TimeoutError):
        return None
    except asyncio.IncompleteReadError as exc:
        return exc.partial


class _Replay:
    """`head`, then the rest of `reader`: the two calls hypercorn makes on its stream (`read`,
    `at_eof`), so the consumed head goes back without a copying task or a second buffer."""

    def __init__(self, head: bytes, reader: asyncio.StreamReader) -> None:
        self._head = head
        self._reader = reader

    async def read(self, n: int = -1) -> bytes:
        if not self._head:
            return await self._reader.read(n)
        size = len(self._head) if n < 0 else n
        data, self._head = self._head[:size], self._head[size:]
        return data

    def at_eof(self) -> bool:
        return not self._head and self._reader.at_eof()


def _first_request_authenticates(app: Any) -> Any:
    """The ASGI app, telling the front door at each request that one has arrived (hypercorn
    runs it in tasks of the connection's task, which carry the connection's admission)."""

    async def asgi(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket"):
            authenticated()
        await app(scope, receive, send)

    return asgi


def http_handler(app: Any, upgrade: UpgradeHandler | None = None) -> StreamHandler:
    config = Config()
    config.accesslog = None
    config.errorlog = None
    config.keep_alive_timeout = 75
    wrapped = wrap_app(_first_request_authenticates(app), config.wsgi_max_body_size, "asgi")
    context = WorkerContext(None)
    state: dict[str, Any] = {}

    async def handle(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, client: str
    ) -> None:
        loop = asyncio.get_running_loop()
        ssl_object = writer.get_extra_info("ssl_object")
        alpn = ssl_object.selected_alpn_protocol() if ssl_object else None
        stream: asyncio.StreamReader | _Replay = reader
        if upgrade is not None and alpn != "h2":
            head = await _first_head(reader)
            if head is not None:
                request = parse_upgrade(head)
                if request is not None:
                    authenticated()
                    await upgrade(request, reader, writer, client)
                    return
                stream = _Replay(head, reader)

        async def serve() -> None:
            # hypercorn calls only read() and at_eof() on its reader, which _Replay provides.
            source = cast(asyncio.StreamReader, stream)
            await TCPServer(wrapped, loop, config, context, state, source, writer)

        async with asyncio.TaskGroup() as tg:
            server = tg.create_task(serve(), name="http connection")
            try:
                await asyncio.shield(server)
            except asyncio.CancelledError:
                writer.transport.abort()
                raise

    return handle
