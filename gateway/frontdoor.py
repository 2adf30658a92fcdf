"""The one public endpoint: every client protocol on one port, told apart by first bytes.

    first bytes                        protocol          handled by
    16 03 ..                           TLS               ALPN: h2 / http/1.1 -> HTTP app,
                                                         postgresql -> PostgreSQL (direct TLS)
    00 00 00 08 04 d2 16 2f/30, ...    PostgreSQL        the PostgreSQL front door
    "SSH-"                             SSH               the SSH front door
    "GET " "POST" ...                  plaintext HTTP    a 400 telling the client to use https
    anything else                      unknown           audited, closed

The bytes are only peeked (MSG_PEEK): the kernel keeps them, so the protocol handler,
including the TLS stack, reads the stream from its first byte. `classify` is pure and is
what the tests and fuzzers drive.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import socket
import ssl
import struct
from collections.abc import Awaitable, Callable
from typing import Any

from gateway.audit import Auditor, AuditUnavailable
from gateway.store import StoreUnavailable
from shared.tasks import TaskOwner

log = logging.getLogger(__name__)

SNIFF_TIMEOUT = 10.0
TLS_HANDSHAKE_TIMEOUT = 10.0
LINGER_TIMEOUT = 1.0
LINGER_BYTES = 64 * 1024

PG_SSL_REQUEST = 80877103
PG_GSSENC_REQUEST = 80877104
PG_CANCEL_REQUEST = 80877102
PG_PROTOCOL_3 = 196608
_HTTP_METHODS = (b"GET ", b"POST", b"PUT ", b"HEAD", b"DELE", b"OPTI", b"PATC", b"CONN", b"PRI ")


class Kind(enum.Enum):
    TLS = "tls"
    POSTGRES = "postgres"
    SSH = "ssh"
    HTTP_PLAIN = "http-plain"
    UNKNOWN = "unknown"


def classify(prefix: bytes) -> Kind | None:
    """The protocol a connection speaks, or None when more bytes are needed to tell."""
    if not prefix:
        return None
    first = prefix[0]
    if first == 0x16:
        return Kind.TLS if len(prefix) < 2 or prefix[1] == 0x03 else Kind.UNKNOWN
    if first == 0x00:
        if len(prefix) < 8:
            return None
        length, code = struct.unpack("!II", prefix[:8])
        if (length == 8 and code in (PG_SSL_REQUEST, PG_GSSENC_REQUEST)) or (
            length == 16 and code == PG_CANCEL_REQUEST
        ):
            return Kind.POSTGRES
        if 8 < length <= 10_000 and code == PG_PROTOCOL_3:
            return Kind.POSTGRES
        return Kind.UNKNOWN
    if first == ord("S"):
        if len(prefix) < 4:
            return None if b"SSH-".startswith(prefix) else Kind.UNKNOWN
        return Kind.SSH if prefix.startswith(b"SSH-") else Kind.UNKNOWN
    if len(prefix) < 4:
        return None if any(m.startswith(prefix) for m in _HTTP_METHODS) else Kind.UNKNOWN
    return Kind.HTTP_PLAIN if prefix[:4] in _HTTP_METHODS else Kind.UNKNOWN


# A plain handler owns the raw socket (the peeked bytes are still unread in it).
PlainHandler = Callable[[socket.socket, str], Awaitable[None]]
# A TLS handler gets the decrypted stream.
StreamHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, str], Awaitable[None]]


async def _peek(sock: socket.socket, deadline: float) -> bytes:
    """Peek at the first bytes until `classify` can decide, the peer closes, or time runs out."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            data = sock.recv(16, socket.MSG_PEEK)
        except BlockingIOError:
            data = None
        if data is not None and (not data or classify(data) is not None):
            return data
        if data is not None:
            # Some bytes but not enough: readiness would fire at once, so poll briefly.
            if loop.time() >= deadline:
                return data
            await asyncio.sleep(0.005)
            continue
        ready = loop.create_future()
        loop.add_reader(sock.fileno(), ready.set_result, None)
        try:
            async with asyncio.timeout_at(deadline):
                await ready
        except TimeoutError:
            return b""
        finally:
            loop.remove_reader(sock.fileno())


async def _discard_input(sock: socket.socket) -> None:
    """Half-close a refused connection, then read and drop what the peer sent, briefly.

    Closing a socket with unread input (the sniffed bytes at least, which were only peeked)
    makes the kernel answer with RST, and a RST can destroy our last words (the plaintext
    HTTP 400) before the peer has read them.
    """
    loop = asyncio.get_running_loop()
    with contextlib.suppress(OSError, TimeoutError):
        sock.shutdown(socket.SHUT_WR)
        drained = 0
        async with asyncio.timeout(LINGER_TIMEOUT):
            while drained < LINGER_BYTES:
                data = await loop.sock_recv(sock, 4096)
                if not data:
                    return
                drained += len(data)


async def accept_stream(
    sock: socket.socket, ssl_context: ssl.SSLContext | None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2**16)
    protocol = asyncio.StreamReaderProtocol(reader)
    kwargs: dict[str, Any] = {}
    if ssl_context is not None:
        kwargs = {"ssl": ssl_context, "ssl_handshake_timeout": TLS_HANDSHAKE_TIMEOUT}
    transport, _ = await loop.connect_accepted_socket(lambda: protocol, sock, **kwargs)
    return reader, asyncio.StreamWriter(transport, protocol, reader, loop)


_PLAIN_HTTP_ANSWER = (
    b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\n"
    b"Content-Length: 45\r\n\r\nThis Wardgate endpoint speaks HTTPS only.\r\n\r\n"
)


class FrontDoor:
    def __init__(
        self,
        ssl_context: ssl.SSLContext,
        auditor: Auditor,
        http_handler: StreamHandler,
    ) -> None:
        self._ssl = ssl_context
        self._audit = auditor
        self._http = http_handler
        self.plain_handlers: dict[Kind, PlainHandler] = {}
        self.alpn_handlers: dict[str, StreamHandler] = {}
        self._tasks = TaskOwner("frontdoor")
        self._listener: socket.socket | None = None

    async def serve(self, listener: socket.socket) -> None:
        """Accept until cancelled; each connection runs in its own owned task."""
        self._listener = listener
        listener.setblocking(False)
        loop = asyncio.get_running_loop()
        try:
            while True:
                sock, addr = await loop.sock_accept(listener)
                client = _format_addr(addr)
                self._tasks.spawn(self._handle(sock, client), name=f"conn {client}")
        finally:
            await self._tasks.aclose()

    async def _handle(self, sock: socket.socket, client: str) -> None:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        loop = asyncio.get_running_loop()
        handed_off = False  # once a transport or handler owns the socket, it closes it
        try:
            prefix = await _peek(sock, loop.time() + SNIFF_TIMEOUT)
            kind = classify(prefix) if prefix else None
            if kind is Kind.TLS:
                handed_off = True
                await self._handle_tls(sock, client)
                return
            handler = self.plain_handlers.get(kind) if kind is not None else None
            if handler is not None:
                handed_off = True
                await handler(sock, client)
                return
            if kind is Kind.HTTP_PLAIN:
                await loop.sock_sendall(sock, _PLAIN_HTTP_ANSWER)
            await self._audit.record(
                "frontdoor.refused",
                client=client,
                protocol=kind.value if kind else "none",
                reason="no handler" if kind not in (None, Kind.UNKNOWN) else "unknown protocol",
                first_bytes=prefix[:8].hex(),
            )
            await _discard_input(sock)
        except (OSError, ssl.SSLError) as exc:
            log.debug("connection from %s failed: %s", client, exc)
        except (AuditUnavailable, StoreUnavailable) as exc:
            log.error("connection from %s dropped: %s", client, exc)
        finally:
            if not handed_off:
                sock.close()

    async def _handle_tls(self, sock: socket.socket, client: str) -> None:
        try:
            reader, writer = await accept_stream(sock, self._ssl)
        except (OSError, ssl.SSLError, TimeoutError) as exc:
            sock.close()
            await self._audit.record("frontdoor.tls_failed", client=client, reason=str(exc))
            return
        try:
            ssl_object = writer.get_extra_info("ssl_object")
            alpn = ssl_object.selected_alpn_protocol() if ssl_object else None
            handler = self.alpn_handlers.get(alpn or "")
            if handler is not None:
                await handler(reader, writer, client)
            elif alpn in (None, "h2", "http/1.1"):
                await self._http(reader, writer, client)
            else:
                await self._audit.record("frontdoor.refused", client=client, alpn=alpn)
        finally:
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError, TimeoutError):
                async with asyncio.timeout(5):
                    await writer.wait_closed()


def _format_addr(addr: Any) -> str:
    if isinstance(addr, tuple) and len(addr) >= 2:
        host, port = addr[0], addr[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(addr)
