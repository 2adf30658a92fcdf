"""Serve one accepted stream with hypercorn (HTTP/1.1 and HTTP/2, WebSockets over both).

hypercorn normally owns its listening sockets; the front door owns ours, so each
decrypted connection is handed to hypercorn's per-connection server.

Cancelled (the gateway stopping), hypercorn's server closes its stream and waits for the
close to complete; over TLS that waits for the peer, which an idle keep-alive client never
answers. The connection is therefore aborted first, so shutdown does not wait on clients.
"""

from __future__ import annotations

import asyncio
from typing import Any

from hypercorn.asyncio.tcp_server import TCPServer
from hypercorn.asyncio.worker_context import WorkerContext
from hypercorn.config import Config
from hypercorn.utils import wrap_app

from gateway.frontdoor import StreamHandler


def http_handler(app: Any) -> StreamHandler:
    config = Config()
    config.accesslog = None
    config.errorlog = None
    config.keep_alive_timeout = 75
    wrapped = wrap_app(app, config.wsgi_max_body_size, "asgi")
    context = WorkerContext(None)
    state: dict[str, Any] = {}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: str) -> None:
        loop = asyncio.get_running_loop()

        async def serve() -> None:
            await TCPServer(wrapped, loop, config, context, state, reader, writer)

        async with asyncio.TaskGroup() as tg:
            server = tg.create_task(serve(), name="http connection")
            try:
                await asyncio.shield(server)
            except asyncio.CancelledError:
                writer.transport.abort()
                raise

    return handle
