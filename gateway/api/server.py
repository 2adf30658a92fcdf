"""Serve one accepted stream with hypercorn (HTTP/1.1 and HTTP/2, WebSockets over both).

hypercorn normally owns its listening sockets; the front door owns ours, so each
decrypted connection is handed to hypercorn's per-connection server.

Cancelled (the gateway stopping), hypercorn's server closes its stream and waits for the
close to complete; over TLS that waits for the peer, which an idle keep-alive client never
answers. The connection is therefore aborted first, so shutdown does not wait on clients.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from hypercorn.asyncio.tcp_server import TCPServer
from hypercorn.asyncio.worker_context import WorkerContext
from hypercorn.config import Config
from hypercorn.utils import wrap_app

from gateway.frontdoor import StreamHandler
from shared.kubeapi import MAX_UPGRADE_HEAD, UpgradeRequest, parse_upgrade

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


def _replayed(
    head: bytes, reader: asyncio.StreamReader, tg: asyncio.TaskGroup
) -> asyncio.StreamReader:
    """A reader that yields `head`, then everything `reader` yields."""
    replay = asyncio.StreamReader(limit=MAX_UPGRADE_HEAD)
    replay.feed_data(head)

    async def pump() -> None:
        with contextlib.suppress(OSError, ConnectionError):
            while data := await reader.read(64 * 1024):
                replay.feed_data(data)
        replay.feed_eof()

    tg.create_task(pump(), name="http connection replay")
    return replay


def http_handler(app: Any, upgrade: UpgradeHandler | None = None) -> StreamHandler:
    config = Config()
    config.accesslog = None
    config.errorlog = None
    config.keep_alive_timeout = 75
    wrapped = wrap_app(app, config.wsgi_max_body_size, "asgi")
    context = WorkerContext(None)
    state: dict[str, Any] = {}

    async def handle(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, client: str
    ) -> None:
        loop = asyncio.get_running_loop()
        ssl_object = writer.get_extra_info("ssl_object")
        alpn = ssl_object.selected_alpn_protocol() if ssl_object else None
        async with asyncio.TaskGroup() as tg:
            if upgrade is not None and alpn != "h2":
                head = await _first_head(reader)
                if head is not None:
                    request = parse_upgrade(head)
                    if request is not None:
                        await upgrade(request, reader, writer, client)
                        return
                    reader = _replayed(head, reader, tg)

            async def serve() -> None:
                await TCPServer(wrapped, loop, config, context, state, reader, writer)

            server = tg.create_task(serve(), name="http connection")
            try:
                await asyncio.shield(server)
            except asyncio.CancelledError:
                writer.transport.abort()
                raise

    return handle
