"""Serve one accepted stream with hypercorn (HTTP/1.1 and HTTP/2, WebSockets over both).

hypercorn normally owns its listening sockets; the front door owns ours, so each
decrypted connection is handed to hypercorn's per-connection server.
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
        await TCPServer(wrapped, loop, config, context, state, reader, writer)

    return handle
