"""`wardgate tcp NAME --listen HOST:PORT`: a local port whose connections reach NAME.

Each accepted connection becomes one WebSocket to the gateway's public endpoint
(`/v1/connections/NAME/tcp`, the user's token in the Authorization header). Protocol: binary
messages are bytes; an empty binary message is end-of-stream (see gateway/protocols/tcp.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import sys
from urllib.parse import quote

import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidStatus

from cli.client import GatewayRef
from shared.listen import ListenError, host_port
from shared.tasks import TaskOwner

log = logging.getLogger(__name__)
READ_SIZE = 64 * 1024


def _ws_url(ref: GatewayRef, name: str) -> str:
    base = ref.url.replace("https://", "wss://", 1).replace("http://", "ws://", 1)
    return f"{base}/v1/connections/{quote(name, safe='')}/tcp"


async def _pump(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, ws: ClientConnection
) -> None:
    async def local_to_gateway() -> None:
        while True:
            data = await reader.read(READ_SIZE)
            if not data:
                await ws.send(b"")
                return
            await ws.send(data)

    async def gateway_to_local() -> None:
        async for message in ws:
            if isinstance(message, str):
                continue
            if not message:
                if writer.can_write_eof():
                    writer.write_eof()
                continue
            writer.write(message)
            await writer.drain()

    async with asyncio.TaskGroup() as tg:
        up = tg.create_task(local_to_gateway(), name="up")
        await tg.create_task(gateway_to_local(), name="down")
        up.cancel()


async def handle(
    ref: GatewayRef, name: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        async with websockets.connect(
            _ws_url(ref, name),
            additional_headers={"Authorization": f"Bearer {ref.token}"},
            ssl=ref.ssl_context(("http/1.1",)) if ref.url.startswith("https") else None,
            compression=None,
            max_size=2**20,
            open_timeout=20,
            user_agent_header="wardgate-tcp",
        ) as ws:
            try:
                await _pump(reader, writer, ws)
            except* (ConnectionClosed, OSError):
                pass
            if ws.close_code not in (None, 1000):
                print(f"wardgate tcp: {name}: {ws.close_reason or ws.close_code}", file=sys.stderr)
    except InvalidStatus as exc:
        print(
            f"wardgate tcp: {name}: gateway refused: HTTP {exc.response.status_code}",
            file=sys.stderr,
        )
    except (OSError, TimeoutError) as exc:
        print(f"wardgate tcp: {name}: cannot reach the gateway: {exc}", file=sys.stderr)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def forward(
    ref: GatewayRef, name: str, host: str, port: int, ready: asyncio.Event | None = None
) -> None:
    connections = TaskOwner(f"tcp/{name}")

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        connections.spawn(handle(ref, name, reader, writer), name=str(peer))

    try:
        server = await asyncio.start_server(accept, host, port)
    except OSError as exc:
        raise ListenError(host_port(host, port), exc) from exc
    bound = server.sockets[0].getsockname()
    print(f"wardgate tcp: {name} on {bound[0]}:{bound[1]}", file=sys.stderr, flush=True)
    if ready is not None:
        ready.set()
    try:
        async with server:
            await server.serve_forever()
    finally:
        await connections.aclose()
