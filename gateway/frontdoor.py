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

Unauthenticated connections are bounded (gateway/admission.py has the rules): an accept over
the limit per client address is closed before anything is read, one over the limit in all
closes the oldest unauthenticated connection to make room; each admitted
connection has deadlines for its first bytes (`sniff_timeout`), its TLS handshake and, from
accept, for authenticating at all (`login_timeout`), after which it is closed whatever phase it
is in. A protocol handler calls `authenticated()` once its client has authenticated: from then
on the connection neither counts nor has a deadline here. Limits and deadlines come from the
`frontdoor:` section of the configuration (`FrontDoorConfig`).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import enum
import errno
import functools
import logging
import socket
import ssl
import struct
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from gateway.admission import Admissions, LogCap, Refusal, Ticket
from gateway.audit import Auditor, AuditUnavailable
from gateway.config import FrontDoorConfig
from gateway.metrics import Counter
from gateway.store import StoreUnavailable
from shared.tasks import TaskOwner

log = logging.getLogger(__name__)

TLS_HANDSHAKE_TIMEOUT = 10.0  # the PostgreSQL door's TLS after SSLRequest
LINGER_TIMEOUT = 1.0
LINGER_BYTES = 64 * 1024
LOG_INTERVAL = 10.0  # seconds between two lines about refused or expired connections
PEEK_BYTES = 16
ACCEPT_RETRY_DELAY = 0.1  # seconds before accepting again after EMFILE and the like
_ACCEPT_RETRY = frozenset(
    {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM, errno.ECONNABORTED}
)

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


def _set_rcvlowat(sock: socket.socket, size: int) -> bool:
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, size)
    except OSError:  # a platform without it: the caller polls instead
        return False
    return True


async def _readable(sock: socket.socket, deadline: float) -> bool:
    """Wait until `sock` is readable; False when the deadline came first."""
    loop = asyncio.get_running_loop()
    ready = loop.create_future()
    loop.add_reader(sock.fileno(), ready.set_result, None)
    try:
        async with asyncio.timeout_at(deadline):
            await ready
    except TimeoutError:
        return False
    finally:
        loop.remove_reader(sock.fileno())
    return True


async def _peek(sock: socket.socket, deadline: float) -> bytes:
    """Peek at the first bytes until `classify` can decide, the peer closes, or time runs out;
    returns what was seen by then.

    Waiting is on readiness, never a poll: once k bytes are queued the socket stays readable,
    so the receive low-water mark (SO_RCVLOWAT) is raised to k + 1 and readiness then means
    that more arrived, or that the peer closed (which readiness reports whatever the mark).
    The mark is 1 again before the handler reads.
    """
    loop = asyncio.get_running_loop()
    seen = b""
    lowat = 1
    polling = False  # no low-water mark on this platform
    try:
        while True:
            try:
                data = sock.recv(PEEK_BYTES, socket.MSG_PEEK)
            except BlockingIOError:
                data = None
            if data is not None:
                if not data or classify(data) is not None:
                    return data  # closed before a byte, or decided
                if len(data) <= len(seen) and not polling:
                    return data  # readable without more bytes: the peer closed mid-prefix
                seen = data
                if not polling and _set_rcvlowat(sock, len(data) + 1):
                    lowat = len(data) + 1
                else:
                    polling = True
                    if loop.time() >= deadline:
                        return data
                    await asyncio.sleep(min(0.05, deadline - loop.time()))
                    continue
            if not await _readable(sock, deadline):
                return seen
    finally:
        if lowat != 1:
            _set_rcvlowat(sock, 1)


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
    sock: socket.socket,
    ssl_context: ssl.SSLContext | None,
    handshake_timeout: float = TLS_HANDSHAKE_TIMEOUT,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2**16)
    protocol = asyncio.StreamReaderProtocol(reader)
    kwargs: dict[str, Any] = {}
    if ssl_context is not None:
        kwargs = {"ssl": ssl_context, "ssl_handshake_timeout": handshake_timeout}
    transport, _ = await loop.connect_accepted_socket(lambda: protocol, sock, **kwargs)
    return reader, asyncio.StreamWriter(transport, protocol, reader, loop)


_PLAIN_HTTP_ANSWER = (
    b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\n"
    b"Content-Length: 45\r\n\r\nThis Wardgate endpoint speaks HTTPS only.\r\n\r\n"
)


class Admission:
    """A connection's standing at the front door until its client authenticates."""

    def __init__(self, ticket: Ticket | None = None, deadline: asyncio.Timeout | None = None):
        self._ticket = ticket
        self._deadline = deadline

    def authenticated(self) -> None:
        """The client has authenticated: the connection stops counting against the limits and
        its login deadline is lifted. On the event loop only; idempotent."""
        if self._ticket is None or self._ticket.released:
            return
        self._ticket.release()
        if self._deadline is not None and not self._deadline.expired():
            self._deadline.reschedule(None)


_current: contextvars.ContextVar[Admission | None] = contextvars.ContextVar(
    "frontdoor_admission", default=None
)
_DETACHED = Admission()


def current_admission() -> Admission:
    """The admission of the connection this task serves (tasks inherit it); for code that
    says "authenticated" from elsewhere (the SSH door's loop callbacks run in no such task).
    Outside a front door connection (a handler driven by a test), one that does nothing."""
    return _current.get() or _DETACHED


def authenticated() -> None:
    """Called by a protocol handler once its client has authenticated (see the module doc)."""
    current_admission().authenticated()


class FrontDoor:
    def __init__(
        self,
        ssl_context: ssl.SSLContext,
        auditor: Auditor,
        http_handler: StreamHandler,
        limits: FrontDoorConfig | None = None,
    ) -> None:
        self._ssl = ssl_context
        self._audit = auditor
        self._http = http_handler
        self.limits = limits or FrontDoorConfig()
        self.plain_handlers: dict[Kind, PlainHandler] = {}
        self.alpn_handlers: dict[str, StreamHandler] = {}
        self._tasks = TaskOwner("frontdoor")
        self._listener: socket.socket | None = None
        self.admissions = Admissions(
            total=self.limits.max_unauthenticated,
            per_address=self.limits.max_unauthenticated_per_address,
        )
        self.unauthenticated = _Gauge(
            "wardgate_frontdoor_unauthenticated_connections",
            "Connections on the public port whose client has not authenticated yet.",
            lambda: self.admissions.open,
        )
        self.refused = Counter(
            "wardgate_frontdoor_refused_total",
            "Connections closed at accept: too many unauthenticated ones from their address.",
            ("reason",),
        )
        self.evicted = Counter(
            "wardgate_frontdoor_evicted_total",
            "Oldest unauthenticated connections closed to admit a new one, by limit (total).",
            ("limit",),
        )
        self.expired = Counter(
            "wardgate_frontdoor_deadline_closed_total",
            "Unauthenticated connections closed at a deadline, by phase (sniff, tls, login).",
            ("phase",),
        )
        self.accept_errors = Counter(
            "wardgate_frontdoor_accept_errors_total",
            "Accepts that failed (EMFILE: out of file descriptors...), by error.",
            ("error",),
        )
        self._refusal_log = LogCap(LOG_INTERVAL)
        self._eviction_log = LogCap(LOG_INTERVAL)
        self._accept_log = LogCap(LOG_INTERVAL)
        self._expiry_log = LogCap(LOG_INTERVAL)

    def counters(self) -> list[Counter]:
        """What `/v1/metrics` shows of the front door."""
        return [self.unauthenticated, self.refused, self.evicted, self.expired, self.accept_errors]

    async def serve(self, listener: socket.socket) -> None:
        """Accept until cancelled; each admitted connection runs in its own owned task."""
        self._listener = listener
        listener.setblocking(False)
        loop = asyncio.get_running_loop()
        try:
            while True:
                try:
                    sock, addr = await loop.sock_accept(listener)
                except OSError as exc:
                    # Out of descriptors or memory for now (or the peer gave up in the backlog):
                    # wait and accept again, as asyncio's own servers do; the door stays open.
                    if exc.errno not in _ACCEPT_RETRY:
                        raise
                    self._note_accept_error(exc)
                    if exc.errno != errno.ECONNABORTED:
                        await asyncio.sleep(ACCEPT_RETRY_DELAY)
                    continue
                client = _format_addr(addr)
                host = addr[0] if isinstance(addr, tuple) else str(addr)
                admitted = self.admissions.admit(host)
                if isinstance(admitted, Refusal):
                    sock.close()  # nothing read, nothing written: as cheap as a refusal gets
                    self._note_refusal(client)
                    continue
                ticket, evicted = admitted
                if evicted is not None:  # its connection closes itself (see _handle)
                    self._note_eviction(client)
                self._tasks.spawn(self._handle(sock, client, ticket), name=f"conn {client}")
        finally:
            await self._tasks.aclose()

    def _note_refusal(self, client: str) -> None:
        self.refused.inc(Refusal.PER_ADDRESS.value)
        held = self._refusal_log.due(asyncio.get_running_loop().time())
        if held is not None:
            log.warning(
                "refused a connection from %s: %d unauthenticated connections from its address "
                "(frontdoor.max_unauthenticated_per_address); %d more refused since the last "
                "such line",
                client,
                self.admissions.per_address,
                held,
            )

    def _note_eviction(self, client: str) -> None:
        self.evicted.inc("total")
        held = self._eviction_log.due(asyncio.get_running_loop().time())
        if held is not None:
            log.warning(
                "%d unauthenticated connections (frontdoor.max_unauthenticated): closed the "
                "oldest to admit one from %s; %d more closed so since the last such line",
                self.admissions.total,
                client,
                held,
            )

    def _note_accept_error(self, exc: OSError) -> None:
        self.accept_errors.inc(errno.errorcode.get(exc.errno or 0, "other"))
        held = self._accept_log.due(asyncio.get_running_loop().time())
        if held is not None:
            log.warning(
                "cannot accept connections: %s; %d more such errors since the last line",
                exc.strerror or exc,
                held,
            )

    def _note_expiry(self, phase: str, client: str) -> None:
        self.expired.inc(phase)
        held = self._expiry_log.due(asyncio.get_running_loop().time())
        if held is not None:
            log.info(
                "closed an unauthenticated connection from %s at its %s deadline; "
                "%d more closed at a deadline since the last such line",
                client,
                phase,
                held,
            )

    async def _handle(self, sock: socket.socket, client: str, ticket: Ticket) -> None:
        limits = self.limits
        handed_off = False  # once a transport or handler owns the socket, it closes it
        deadline: asyncio.Timeout | None = None
        try:
            async with asyncio.timeout(limits.login_timeout) as deadline:
                if ticket.evicted:  # before it ever ran
                    return
                ticket.on_evict.append(functools.partial(_expire_now, deadline))
                _current.set(Admission(ticket, deadline))
                handler = await self._dispatch(sock, client)
                if handler is not None:
                    handed_off = True
                    await handler
        except TimeoutError:
            pass  # the login deadline (counted below), or a handler's own, unwound
        except (OSError, ssl.SSLError) as exc:
            log.debug("connection from %s failed: %s", client, exc)
        except (AuditUnavailable, StoreUnavailable) as exc:
            log.error("connection from %s dropped: %s", client, exc)
        finally:
            ticket.release()
            if not handed_off:
                sock.close()
            # However the handler unwound from the cancellation (a cleanup may raise instead).
            if deadline is not None and deadline.expired() and not ticket.evicted:
                self._note_expiry("login", client)

    async def _dispatch(self, sock: socket.socket, client: str) -> Awaitable[None] | None:
        """Sniff; the handler's run, which owns the socket, or None once answered here."""
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        loop = asyncio.get_running_loop()
        prefix = await _peek(sock, loop.time() + self.limits.sniff_timeout)
        kind = classify(prefix) if prefix else None
        if kind is None:
            # Nothing that names a protocol by the deadline, or a close: not worth an audit
            # event each (a slowloris would write one per connection), counted instead.
            if prefix:
                self._note_expiry("sniff", client)
            return None
        if kind is Kind.TLS:
            return self._handle_tls(sock, client)
        handler = self.plain_handlers.get(kind)
        if handler is not None:
            return handler(sock, client)
        if kind is Kind.HTTP_PLAIN:
            await loop.sock_sendall(sock, _PLAIN_HTTP_ANSWER)
        await self._audit.record(
            "frontdoor.refused",
            client=client,
            protocol=kind.value,
            reason="no handler" if kind is not Kind.UNKNOWN else "unknown protocol",
            first_bytes=prefix[:8].hex(),
        )
        await _discard_input(sock)
        return None

    async def _handle_tls(self, sock: socket.socket, client: str) -> None:
        timeout = self.limits.tls_handshake_timeout
        try:
            # Our own deadline: asyncio's handshake timeout (a second later, as a backstop)
            # ends in a ConnectionAbortedError that looks like any other failure.
            async with asyncio.timeout(timeout):
                reader, writer = await accept_stream(sock, self._ssl, timeout + 1)
        except TimeoutError:
            sock.close()
            self._note_expiry("tls", client)
            return
        except (OSError, ssl.SSLError) as exc:
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


def _expire_now(deadline: asyncio.Timeout) -> None:
    """Evicted: the connection unwinds as at its login deadline."""
    if not deadline.expired():
        deadline.reschedule(asyncio.get_running_loop().time())


class _Gauge(Counter):
    """A value read when rendered (no bookkeeping that could drift), in the format's gauge type."""

    kind = "gauge"

    def __init__(self, name: str, help_text: str, read: Callable[[], int]) -> None:
        super().__init__(name, help_text, ())
        self._read = read

    def samples(self) -> list[tuple[tuple[str, ...], float]]:
        return [((), float(self._read()))]

    def lines(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} gauge"
        yield f"{self.name} {self._read()}"


def _format_addr(addr: Any) -> str:
    if isinstance(addr, tuple) and len(addr) >= 2:
        host, port = addr[0], addr[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(addr)
