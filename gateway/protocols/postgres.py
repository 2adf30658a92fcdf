"""The PostgreSQL front door: native clients on the public endpoint (gateway half).

    client ── SSLRequest ──▶ 'S', TLS with the gateway certificate
           (or direct TLS with ALPN "postgresql", PostgreSQL 17)
           ── StartupMessage(user, database) ──▶ AuthenticationCleartextPassword (inside TLS)
           ── PasswordMessage(Wardgate credential) ──▶ authenticate, open the session:
              the agent logs in to the real server with the injected credential
           ◀── AuthenticationOk, the server's ParameterStatus..., BackendKeyData (the
               server's pid, a secret of ours), ReadyForQuery
           then every statement is recorded (before it is forwarded) and relayed.

`database` names the Wardgate connection and `user` the Wardgate user; the database's own
user, database and password are the connection's and never reach the client. Errors are
ErrorResponses with a SQLSTATE: 3D000 unknown connection, 28P01 bad credential, 42501
denied, 08006 no agent / agent lost, 08001 target unreachable or refusing the credential,
08P01 protocol violation.

Per statement, read-only access (`gateway.policy.readonly`) and then the guardrails
(`gateway.policy.rules`, with the catalog asked what called user functions are:
`gateway.protocols.pgfunctions`) judge each simple Query and each extended-protocol Parse (a
statement prepared with Parse is judged at Parse, whatever Bind/Execute follow) and refuse
the fastpath FunctionCall. A refusal is answered in the server's place and in order
(ErrorResponse 42501 after the answers to what the client sent before, then ReadyForQuery,
at its Sync for Parse) and audited as `pg.refused`; the session goes on. A refused Parse in
a batch whose start the server already holds cannot be answered in order: the session ends
(fail closed). The server's part of the batch is dropped with its session; the gateway reads
the client's batch to its Sync (at most LINGER seconds), answers it with ERROR 42501 and
ReadyForQuery, so that a pipelining client reports the refusal rather than a lost connection,
then sends FATAL 42501 and closes lingering (`_linger`: FIN, then reads until the client hangs
up), so that no TCP reset destroys the error before the client reads it.

The server may end the session itself (pg_terminate_backend, idle_in_transaction_session_timeout,
a shutdown or restart): the client gets what it sent, its FATAL error, then end-of-file, as
from a server that exits, and the session is recorded as ended by the server with that SQLSTATE
and message. PostgreSQL has no half-open session, so the server's end-of-file ends it; raw TCP
(`gateway.protocols.tcp`) keeps half-close.

A CancelRequest (on a new connection, plaintext or TLS) is routed by the key the gateway
handed out (`gateway.protocols.pgcancel`) to the agent serving that session, which replays
it to the server with the real key; as with PostgreSQL, the client's cancel connection is
closed only once the server has closed the agent's (Signal DONE; CANCEL_TIMEOUT at most), so
that a cancel cannot land on the statement the client sends next. A client asking for
protocol 3.2 gets it (a 32-byte secret) whatever its server speaks; a later minor version or
`_pq_` options get a NegotiateProtocolVersion, as from PostgreSQL 18. Masking happens at the
agent; the counts it reports beside the data are
audited as `pg.masked`.

Approvals: a statement the guardrails send to review (`effect: review`) is held, not
refused. The client stays connected and at once receives a NoticeResponse naming the review
and how to approve it (`wardgate reviews approve ID`); the session's upward relay waits
(`gateway.reviews.ReviewService.wait`, which never blocks other sessions) while answers the
server still owes keep flowing down. Approved, the statement is forwarded as if it had just
arrived; denied, timed out or cancelled, it is refused like any other (42501, in order, the
session goes on); cancelled by the client (CancelRequest), its review is withdrawn and the
client gets 57014. A simple Query is held whole (its statements run together or not at all).
A Parse is judged at Parse: once approved, its prepared statement runs at every
Bind/Execute, and a Parse of the same text in the same session is not asked again until the
approval expires. A Parse that needs review in the middle of a batch the server already
holds cannot be held without stalling that batch: it ends the session (fail closed).

The policy is the store's newest version (`gateway.policystore`): a session switches to a new
version at its next statement, and each recorded statement carries `policy_version`.
Exfiltration budgets (`gateway.policy.budgets`) count the rows and bytes the client receives;
a statement on an exhausted budget is refused like a guardrail refusal but with SQLSTATE 53400,
and a result is cut before the first row the budget has no room for (`stop_offset`,
`ResultStopper`; the server is asked to cancel). A budget with `on_exceed: review` holds the
statement instead, as a review rule would (the budget's `review:` terms); approved, it runs and
its result is not cut by that budget until the server is idle again; denied or timed out, it is
refused with 53400.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from gateway.audit import Auditor, AuditUnavailable, durable
from gateway.auth import Authenticator, AuthError
from gateway.frontdoor import accept_stream, authenticated
from gateway.policy.approval import ReviewTerms
from gateway.policy.budgets import BUDGET_SQLSTATE, ResultStopper
from gateway.policy.grants import AccessPolicy
from gateway.policy.readonly import READ_ONLY_SQLSTATE, check_read_only
from gateway.policy.rules import Decision, Policy, SessionGuard, subject_for
from gateway.policystore import BudgetLedger, PolicyView, SessionPolicy, as_view
from gateway.protocols.pgcancel import CancelKeys, secret_length
from gateway.protocols.pgfunctions import function_check
from gateway.protocols.pgtrack import PgTracker, StatementFinished, StatementStarted
from gateway.ratelimit import Rejections, peer_host
from gateway.reviews import ReviewService
from gateway.sessions import Session, SessionBroker, SessionError
from gateway.store import StoreUnavailable
from shared.pgwire.backend import (
    BackendKeyData,
    ReadyForQuery,
    authentication_cleartext_password,
    authentication_ok,
    backend_key_data,
    decode_backend,
    error_response,
    negotiate_protocol_version,
    notice_response,
    ready_for_query,
)
from shared.pgwire.errors import PgProtocolError, RemoteProtocolError
from shared.pgwire.framing import Message, MessageReader
from shared.pgwire.frontend import (
    Bind,
    Close,
    Execute,
    FrontendMessage,
    Parse,
    Query,
    Sync,
    decode_frontend,
)
from shared.pgwire.startup import (
    CancelRequest,
    GSSENCRequest,
    SSLRequest,
    StartupMessage,
    parse_startup_packet,
    startup_packet_length,
)
from shared.tunnel.frames import ResetCode, SignalKind
from shared.tunnel.stream import (
    DataReceived,
    MaskReported,
    RemoteClosed,
    SessionClosedError,
    SessionReset,
)

log = logging.getLogger(__name__)

STARTUP_TIMEOUT = 30.0
CLIENT_CHECK = 1.0  # seconds between looks for a client that hung up while held
READ_SIZE = 64 * 1024
# Seconds a client's cancel connection waits for the agent to report the server's answer.
CANCEL_TIMEOUT = 10.0
# Seconds a session the gateway ends keeps reading (and dropping) what the client still sends,
# so that the client reads the error that ends it (see `_linger`).
LINGER = 2.0
# Startup parameters passed through to the server; user and database are the connection's.
# Class 53, insufficient resources: the address spent its failed attempts (no standard code).
TOO_MANY_FAILURES = "53300"
_NOT_FORWARDED = frozenset({"user", "database", "replication"})
_FRONTEND_TRACKED = frozenset(b"QPBECSX")

SQLSTATE_BY_KIND = {
    "unknown_connection": "3D000",
    "wrong_type": "3D000",
    "forbidden": "42501",
    "no_agent": "08006",
    "agent_lost": "08006",
    "unreachable": "08001",
    "unsupported": "08001",
    "unavailable": "58030",  # the session could not be recorded: not opened
}


class ClientGone(Exception):
    pass


class StatementRefused(Exception):
    """A refused statement in the middle of a batch the server has partly received."""

    def __init__(self, reason: str, *, synced: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.synced = synced  # the client ended its batch with Sync: it awaits ReadyForQuery


# Messages that carry SQL (simple Query, extended Parse) or bypass it (fastpath call).
_CHECKED = frozenset((b"Q", b"P", b"F"))
# ... and Bind, which runs a statement prepared earlier (budgets judge it).
_JUDGED = _CHECKED | {b"B"}


@dataclass(frozen=True, slots=True)
class Refusal:
    reason: str
    text: str
    rules: tuple[str, ...] = ()  # the guardrail rules that denied it; () for read-only
    sqlstate: str = READ_ONLY_SQLSTATE  # 42501; 57014 for a held statement the client cancelled
    budget: str | None = None  # the exfiltration budget that is exhausted


@dataclass(frozen=True, slots=True)
class Hold:
    """A statement the guardrails send to review: held until others approve it."""

    reason: str
    text: str
    rules: tuple[str, ...]
    terms: ReviewTerms
    budgets: tuple[str, ...] = ()  # exhausted budgets (on_exceed review) this asks past


def _refusal(
    kind: bytes,
    decoded: FrontendMessage | None,
    read_only: bool,
    guard: SessionGuard | None,
    decision: Decision | None = None,
) -> Refusal | Hold | None:
    """Why this session must not send this message, or None.

    Read-only access is checked first, then the guardrails: both answer a refusal the same
    way (42501, in order), so the client cannot tell which check it met except by the reason.
    """
    if kind == b"F":
        # A function called by OID would bypass the SQL checks entirely.
        if read_only:
            return Refusal("read-only access: the fastpath function-call protocol is refused", "")
        return Refusal("policy: the fastpath function-call protocol is refused", "")
    text = decoded.text if isinstance(decoded, Query) else getattr(decoded, "query", "")
    if read_only:
        verdict = check_read_only(text)
        if not verdict.allowed:
            return Refusal(verdict.reason, text)
    if guard is not None:
        decision = decision or guard.check(text)
        if decision.effect == "review" and decision.review is not None:
            return Hold(decision.reason, text, decision.rules, decision.review)
        if not decision.allowed:
            return Refusal(f"policy: {decision.reason}", text, decision.rules)
    return None


def _sql_text(decoded: Query | Parse) -> str:
    return decoded.text if isinstance(decoded, Query) else decoded.query


async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A lingering close: the client must read the FATAL error just written before it is cut.

    A socket closed while client bytes wait unread in its receive queue, or that receives
    bytes after it is closed, answers with a TCP RST, and an RST makes the client's kernel
    drop what the client has not read yet: the error. A client in a pipeline keeps sending
    after the message the gateway refused, so: flush the error, end our direction (TCP FIN:
    the client reads the error, then end-of-file), and read and drop whatever the client
    still sends until it hangs up or LINGER seconds pass. The caller then closes.
    """
    await _end_output(writer)
    await _drain_client(reader)


async def _end_output(writer: asyncio.StreamWriter) -> None:
    """Flush what was written, then TCP FIN: the client reads it, then end-of-file."""
    with contextlib.suppress(ConnectionError, OSError, ssl.SSLError, TimeoutError):
        await writer.drain()
        # uvloop queues small writes until the end of the loop iteration: one turn of the
        # loop puts the error on the wire before the FIN that must follow it.
        await asyncio.sleep(0)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            # The transport's socket refuses shutdown(); a duplicate descriptor does not,
            # and shutdown acts on the connection, not on one descriptor. (No TLS
            # close_notify: asyncio has no TLS half-close; after a FATAL error libpq and
            # psycopg report the error, not the missing close_notify.)
            with socket.fromfd(sock.fileno(), sock.family, sock.type) as dup:
                dup.shutdown(socket.SHUT_WR)


async def _drain_client(reader: asyncio.StreamReader) -> None:
    """Read and drop what the client still sends, until it hangs up or LINGER seconds pass."""
    with contextlib.suppress(ConnectionError, OSError, ssl.SSLError, TimeoutError):
        async with asyncio.timeout(LINGER):
            while await reader.read(READ_SIZE):
                pass


async def _read_packet(reader: asyncio.StreamReader) -> bytes:
    prefix = await reader.readexactly(4)
    length = startup_packet_length(prefix)
    assert length is not None
    return prefix + await reader.readexactly(length - 4)


async def _sock_read_packet(sock: socket.socket) -> bytes:
    """Read one startup packet from a raw socket (before any TLS)."""
    loop = asyncio.get_running_loop()
    data = b""
    need: int | None = None
    while need is None or len(data) < need:
        chunk = await loop.sock_recv(sock, (need or 4) - len(data))
        if not chunk:
            raise ClientGone("client closed during startup")
        data += chunk
        if need is None and len(data) >= 4:
            need = startup_packet_length(data[:4])
    return data


class PostgresFrontDoor:
    def __init__(
        self,
        ssl_context: ssl.SSLContext,
        auth: Authenticator,
        broker: SessionBroker,
        auditor: Auditor,
        *,
        guardrails: Policy | PolicyView | None = None,
        access: AccessPolicy | None = None,
        reviews: ReviewService | None = None,
        budgets: BudgetLedger | None = None,
        limiter: Rejections | None = None,  # refused credentials per address
    ) -> None:
        self._ssl = ssl_context
        self._auth = auth
        self._broker = broker
        self._audit = auditor
        self._guardrails = as_view(guardrails)
        self._budgets = budgets
        self._access = access or AccessPolicy()
        self._reviews = reviews
        self._limiter = limiter
        self._holding: dict[str, asyncio.Event] = {}  # session id -> set to withdraw its hold
        self.cancel_keys: CancelKeys[Session] = CancelKeys()

    # ---- entry points (registered on the front door) ---------------------------------

    async def plain(self, sock: socket.socket, client: str) -> None:
        """A connection whose first bytes are a PostgreSQL startup packet."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(STARTUP_TIMEOUT):
                while True:
                    packet = parse_startup_packet(await _sock_read_packet(sock))
                    if isinstance(packet, GSSENCRequest):
                        await loop.sock_sendall(sock, b"N")
                        continue
                    break
        except (PgProtocolError, ClientGone, TimeoutError, OSError) as exc:
            await self._refuse_raw(sock, client, exc)
            return
        if isinstance(packet, CancelRequest):
            try:
                await self._cancel(packet, client)
            finally:
                sock.close()  # the client's cancel returns now: the server has acted
            return
        if isinstance(packet, SSLRequest):
            await loop.sock_sendall(sock, b"S")
            try:
                reader, writer = await accept_stream(sock, self._ssl)
            except (OSError, ssl.SSLError, TimeoutError) as exc:
                sock.close()
                await self._audit.record("frontdoor.tls_failed", client=client, reason=str(exc))
                return
            await self._serve(reader, writer, client, tls=True)
            return
        reader, writer = await accept_stream(sock, None)
        assert isinstance(packet, StartupMessage)
        await self._serve(reader, writer, client, tls=False, startup=packet)

    async def direct_tls(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, client: str
    ) -> None:
        """PostgreSQL 17 direct TLS: ALPN "postgresql", the startup packet inside TLS."""
        await self._serve(reader, writer, client, tls=True, own_writer=False)

    # ---- refusals --------------------------------------------------------------------

    async def _refuse_raw(self, sock: socket.socket, client: str, exc: BaseException) -> None:
        reason = str(exc) or type(exc).__name__
        with contextlib.suppress(OSError):
            if isinstance(exc, PgProtocolError):
                await asyncio.get_running_loop().sock_sendall(
                    sock, error_response("08P01", f"invalid startup packet: {reason}")
                )
        sock.close()
        await self._audit.record("pg.refused", client=client, reason=reason)

    async def _cancel(self, request: CancelRequest, client: str) -> None:
        session = self.cancel_keys.find(request.pid, request.secret)
        if session is None:
            await self._audit.record("pg.cancel_refused", client=client, reason="unknown key")
            return
        await self._audit.record(
            "pg.cancel", actor=session.identity.user, session_id=session.id, client=client
        )
        holding = self._holding.get(session.id)
        if holding is not None:
            holding.set()  # a held statement: withdraw its review (the server runs nothing)
        # As from PostgreSQL, the client's cancel connection closes once the server has
        # acted on it (the agent's DONE: the server closed the agent's cancel connection),
        # so that a statement the client sends next is not the one cancelled.
        with contextlib.suppress(SessionClosedError, TimeoutError):
            signal_id = await session.stream.send_signal(SignalKind.CANCEL)
            async with asyncio.timeout(CANCEL_TIMEOUT):
                await session.stream.wait_signal_done(signal_id)

    # ---- one client ------------------------------------------------------------------

    async def _serve(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        client: str,
        *,
        tls: bool,
        startup: StartupMessage | None = None,
        own_writer: bool = True,
    ) -> None:
        try:
            await self._serve_client(reader, writer, client, tls=tls, startup=startup)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, ClientGone):
            pass
        except (AuditUnavailable, StoreUnavailable) as exc:
            # Before a session exists (a refusal that could not be recorded): fail closed,
            # and say why in the client's protocol.
            log.error("postgres client %s: %s", client, exc)
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                writer.write(error_response("58030", f"connection not accepted: {exc}"))
                await writer.drain()
        finally:
            if own_writer:
                writer.close()
                with contextlib.suppress(OSError, ssl.SSLError, TimeoutError):
                    async with asyncio.timeout(5):
                        await writer.wait_closed()

    async def _fail(
        self, writer: asyncio.StreamWriter, sqlstate: str, message: str, client: str, **audit: str
    ) -> None:
        writer.write(error_response(sqlstate, message))
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        await self._audit.record(
            "pg.refused", client=client, sqlstate=sqlstate, reason=message, **audit
        )

    async def _serve_client(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        client: str,
        *,
        tls: bool,
        startup: StartupMessage | None,
    ) -> None:
        try:
            async with asyncio.timeout(STARTUP_TIMEOUT):
                while startup is None:
                    packet = parse_startup_packet(await _read_packet(reader))
                    if isinstance(packet, CancelRequest):
                        await self._cancel(packet, client)
                        return
                    if isinstance(packet, StartupMessage):
                        startup = packet
                    else:  # SSLRequest/GSSENCRequest inside TLS: nothing more to offer
                        writer.write(b"N")
                user = startup.params.get("user", "")
                database = startup.params.get("database") or user
                if "replication" in startup.params:
                    await self._fail(
                        writer, "0A000", "replication connections are not supported", client
                    )
                    return
                # Plaintext would expose the Wardgate credential: only dev-only connections
                # (option allow_plaintext=true) may accept it.
                if not tls and not await self._plaintext_allowed(database):
                    await self._fail(
                        writer,
                        "28000",
                        "this gateway requires TLS: connect with sslmode=require "
                        "(or verify-full with the gateway CA)",
                        client,
                        connection=database,
                    )
                    return
                # Protocol 3.2 (PostgreSQL 18) differs from 3.0 only in longer cancel keys,
                # which are the gateway's own: a client gets up to 3.2 whatever its server
                # speaks. `_pq_` options mean nothing to us: refused by name, as a server does.
                minor = min(startup.version[1], 2)
                pq_options = sorted(k for k in startup.params if k.startswith("_pq_."))
                if startup.version[1] > minor or pq_options:
                    writer.write(negotiate_protocol_version(minor, pq_options))
                writer.write(authentication_cleartext_password())
                await writer.drain()
                password = await self._read_password(reader)
        except PgProtocolError as exc:
            await self._fail(writer, "08P01", f"protocol violation: {exc}", client)
            return
        except TimeoutError:
            await self._fail(writer, "08P01", "startup timed out", client)
            return

        try:
            identity = await self._auth.authenticate(password)
        except AuthError as exc:
            if self._limiter and (
                over := await self._limiter.rejected(peer_host(client), "postgres")
            ):
                # Over the address's limit: refused without one more event (api/ratelimit.py).
                writer.write(error_response(TOO_MANY_FAILURES, over.message))
                with contextlib.suppress(ConnectionError):
                    await writer.drain()
                return
            await self._fail(
                writer,
                "28P01",
                f'password authentication failed for user "{user}"',
                client,
                user=user,
                reason_detail=str(exc),
            )
            return
        if identity.user != user:
            await self._fail(
                writer,
                "28P01",
                f'password authentication failed for user "{user}"',
                client,
                user=user,
                reason_detail="credential belongs to another user",
            )
            return
        authenticated()  # the front door's limits and login deadline end here

        forwarded = {
            f"startup.{k}": v
            for k, v in startup.params.items()
            if k not in _NOT_FORWARDED and not k.startswith("_pq_.")
        }
        try:
            session = await self._broker.open(
                identity,
                database,
                protocol="postgres",
                client_addr=client,
                types=("postgres",),
                extra_options=forwarded,
            )
        except SessionError as exc:
            writer.write(error_response(SQLSTATE_BY_KIND.get(exc.kind, "08006"), exc.message))
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            return
        await self._relay(reader, writer, session, secret_length(minor))

    async def _plaintext_allowed(self, connection: str) -> bool:
        record = await self._broker.connection(connection)
        return record is not None and record.options.get("allow_plaintext") == "true"

    @staticmethod
    async def _read_password(reader: asyncio.StreamReader) -> str:
        header = await reader.readexactly(5)
        if header[:1] != b"p":
            raise RemoteProtocolError(f"expected a password message, got type {header[:1]!r}")
        length = int.from_bytes(header[1:5], "big")
        if not 5 <= length <= 4096:
            raise RemoteProtocolError("password message of impossible length")
        body = await reader.readexactly(length - 4)
        return body.rstrip(b"\0").decode("utf-8", "replace")

    # ---- the session -----------------------------------------------------------------

    async def _relay(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        session: Session,
        key_length: int,
    ) -> None:
        stream = session.stream
        tracker = PgTracker(
            time.monotonic,
            record_params=session.connection.options.get("record_params") == "true",
        )
        seqs: dict[int, int] = {}  # statement index -> audit seq of its pg.statement event
        cancel_key: tuple[int, bytes] | None = None  # handed to the client, from the server's pid
        read_only = session.access == "read-only"
        policy = self._session_policy(session)
        functions = function_check(self._broker, session)
        flush_wake = asyncio.Event()  # a budget was crossed: move usage to the store now
        stopper: ResultStopper | None = None  # a result being stopped by a budget
        progress = asyncio.Event()  # set whenever server data reached the client
        error: str | None = None
        server_closed = False  # the server ended the session (its FATAL, or it went away)
        said_goodbye = False  # the client sent Terminate: the server's close answers it
        audit = self._audit
        user = session.identity.user

        async def record_started(started: list[StatementStarted]) -> None:
            # All statements of one message go into the same commit, in order.
            queued = [
                audit.queue(
                    "pg.statement",
                    actor=user,
                    session_id=session.id,
                    connection=session.connection.name,
                    groups=list(session.identity.groups),
                    text=st.text,
                    protocol=st.protocol,
                    params=st.params,
                    statement=st.statement,
                    policy_version=policy.version,
                    **({"values": list(st.values)} if st.values is not None else {}),
                )
                for st in started
            ]
            for st, event in zip(started, await durable(queued), strict=True):
                seqs[st.index] = event.seq

        def record_finished(finished: list[StatementFinished]) -> None:
            for f in finished:
                audit.submit(
                    "pg.result",
                    actor=user,
                    session_id=session.id,
                    statement_seq=seqs.pop(f.index, None),
                    tags=list(f.tags),
                    rows=f.rows,
                    duration_ms=f.duration_ms,
                    sqlstate=f.sqlstate,
                    error=f.error,
                    skipped=f.skipped,
                )

        async def server_idle() -> None:
            while not tracker.idle:
                progress.clear()
                await progress.wait()

        async def refuse(message: Message, refusal: Refusal) -> None:
            """Answer a refused statement in place of the server, in order."""
            await server_idle()  # earlier answers reach the client before our error
            await audit.record(
                "pg.refused",
                actor=user,
                session_id=session.id,
                connection=session.connection.name,
                text=refusal.text,
                reason=refusal.reason,
                rules=list(refusal.rules),
                policy_version=policy.version,
                **({"budget": refusal.budget} if refusal.budget else {}),
            )
            writer.write(error_response(refusal.sqlstate, refusal.reason, severity="ERROR"))
            if message.type not in (b"P", b"B"):  # ReadyForQuery comes at the client's Sync
                writer.write(ready_for_query(tracker.tx_status))  # type: ignore[arg-type]
            await writer.drain()

        approved_parses: dict[str, float] = {}  # Parse text -> when its approval expires

        async def held(hold: Hold) -> Refusal | None:
            """Hold a statement for review: None once approved, else why it is refused."""
            if self._reviews is None:
                return Refusal(
                    f"policy: {hold.reason}; approvals are not enabled on this gateway",
                    hold.text,
                    hold.rules,
                )
            await server_idle()  # our notice must not land inside a server message
            try:
                review = await self._reviews.hold(
                    session.identity,
                    connection=session.connection.name,
                    session_id=session.id,
                    protocol="postgres",
                    text=hold.text,
                    reason=hold.reason,
                    rules=hold.rules,
                    terms=hold.terms,
                )
            except AuditUnavailable:
                raise
            except Exception:
                # Fail closed: without a stored review nobody could approve it.
                log.exception("session %s: cannot create a review", session.id)
                return Refusal(
                    f"policy: {hold.reason}; the review could not be created", hold.text, hold.rules
                )
            writer.write(
                notice_response(
                    "00000",
                    f"statement held for review {review.id}: {hold.reason}",
                    detail=f"waiting up to {hold.terms.timeout}s for "
                    f"{hold.terms.required} approval(s)",
                    hint=f"another person approves with: wardgate reviews approve {review.id}",
                )
            )
            await writer.drain()
            withdrawn = self._holding[session.id] = asyncio.Event()
            try:
                decided = await self._reviews.wait_for_client(
                    review.id, left=withdrawn.wait(), gone=reader.at_eof, check=CLIENT_CHECK
                )
            except asyncio.CancelledError:
                # The session is ending: nobody is left to run the statement.
                await asyncio.shield(self._reviews.cancel(review.id, "the session ended"))
                raise
            finally:
                self._holding.pop(session.id, None)
            budget = hold.budgets[0] if hold.budgets else None
            refused = BUDGET_SQLSTATE if budget else READ_ONLY_SQLSTATE
            if decided is None and reader.at_eof():
                await self._reviews.cancel(review.id, "the client went away")
                raise ConnectionResetError("the client went away while its statement was held")
            if decided is None:
                await self._reviews.cancel(review.id, "cancelled by the client")
                return Refusal(
                    f"canceling statement due to user request: review {review.id} withdrawn",
                    hold.text,
                    hold.rules,
                    sqlstate="57014",
                    budget=budget,
                )
            if decided.status == "approved" and reader.at_eof():
                # The client hung up while it waited: run nothing on its behalf.
                raise ConnectionResetError("the client went away while its statement was held")
            if decided.status == "approved":
                return None
            outcome = {"denied": "was denied", "expired": "timed out"}.get(
                decided.status, f"was {decided.status}"
            )
            return Refusal(
                f"policy: review {review.id} {outcome} ({decided.decision}); statement not run",
                hold.text,
                hold.rules,
                sqlstate=refused,
                budget=budget,
            )

        async def judge(
            message: Message, decoded: FrontendMessage | None, batch_start: bool
        ) -> Refusal | Hold | None:
            """Read-only access and guardrails (of the version in force), then budgets;
            a statement held for review is held only when its budget allows it to run."""
            guard = policy.current()  # a new policy version applies from here on
            if (read_only or guard is not None) and message.type in _CHECKED:
                # The guardrails with the catalog behind them (volatile user functions).
                decision = None
                if guard is not None and isinstance(decoded, Query | Parse):
                    decision = await functions.check(guard, _sql_text(decoded))
                verdict = _refusal(message.type, decoded, read_only, guard, decision)
                if isinstance(verdict, Refusal):
                    return verdict
                hold = verdict
            else:
                hold = None
            # Budgets: a statement to be parsed or run; a Bind mid-batch follows a Parse
            # judged already.
            if not policy.metered or message.type == b"F":
                return hold
            if message.type == b"B" and not batch_start:
                return hold
            exceeded = await policy.exhausted()
            if exceeded is None:
                return hold
            text = getattr(decoded, "text", None) or getattr(decoded, "query", "")
            terms = exceeded.budget.review
            if terms is not None:  # only budgets that ask are exhausted (stopping ones win)
                if hold is not None:
                    # Held once, on the rule's terms; its result is then still cut by the
                    # budget (an approval of the rule does not stand for the budget's).
                    return hold
                reason = f"{exceeded.message}; running it needs approval"
                return Hold(reason, str(text), (), terms, budgets=policy.asking())
            return Refusal(
                exceeded.message, str(text), sqlstate=BUDGET_SQLSTATE, budget=exceeded.budget.name
            )

        async def until_sync(frames: MessageReader) -> bool:
            """Drop what the client sends up to the end of its batch; True at its Sync,
            False when it hangs up, sends Terminate or LINGER seconds pass first. A
            pipelining client (psycopg) takes an error as the answer to its batch only once
            it has sent the whole batch and reads up to the ReadyForQuery that ends it; told
            earlier, or cut off before that, it reports the lost connection instead."""
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(LINGER):
                    while True:
                        while (message := frames.next_message()) is not None:
                            if message.type in b"SX":
                                return message.type == b"S"
                        data = await reader.read(READ_SIZE)
                        if not data:
                            return False
                        frames.feed(data)
            return False

        async def client_to_agent() -> None:
            nonlocal said_goodbye
            frames = MessageReader()
            discarding = False  # after a refused Parse: skip to Sync, as the server would
            batch_start = True  # nothing of the current extended-protocol batch forwarded
            while True:
                data = await reader.read(READ_SIZE)
                if not data:
                    await stream.send_close()
                    return
                frames.feed(data)
                out: list[bytes] = []
                while (message := frames.next_message()) is not None:
                    if discarding:
                        if message.type == b"S":
                            discarding, batch_start = False, True
                            writer.write(ready_for_query(tracker.tx_status))  # type: ignore[arg-type]
                            await writer.drain()
                        continue
                    # Decoded once, for the checks and the recording alike.
                    tracked = message.type[0] in _FRONTEND_TRACKED
                    decoded = decode_frontend(message) if tracked else None
                    if message.type in _JUDGED:
                        refusal = await judge(message, decoded, batch_start)
                        if isinstance(refusal, Hold):
                            if out:  # what came before goes first, held or not
                                await stream.send_data(b"".join(out))
                                out.clear()
                            hold = refusal
                            refusal = await self._review_statement(
                                message.type, hold, batch_start, approved_parses, held
                            )
                            if refusal is None and hold.budgets:
                                # Its result runs past those budgets until the server is
                                # idle again (forward); it is still counted.
                                policy.waive(hold.budgets)
                        if refusal is not None:
                            if out:
                                await stream.send_data(b"".join(out))
                                out.clear()
                            if message.type == b"P" and not batch_start:
                                # Part of this batch is already at the server: no answer of
                                # ours can keep the order, so the session ends, closed.
                                await audit.record(
                                    "pg.refused",
                                    actor=user,
                                    session_id=session.id,
                                    connection=session.connection.name,
                                    text=refusal.text,
                                    reason=refusal.reason,
                                    rules=list(refusal.rules),
                                    policy_version=policy.version,
                                    ended_session=True,
                                )
                                synced = await until_sync(frames)
                                raise StatementRefused(refusal.reason, synced=synced)
                            await refuse(message, refusal)
                            discarding = message.type in (b"P", b"B")
                            continue
                    if message.type in b"SQ":
                        batch_start = True
                    elif message.type in b"PBDEHC":
                        batch_start = False
                    if decoded is not None:
                        started = self._track(tracker, decoded)
                        if started:
                            # Durably recorded before the statement leaves the gateway.
                            if out:
                                await stream.send_data(b"".join(out))
                                out.clear()
                            await record_started(started)
                    out.append(message.raw)
                    if message.type == b"X":
                        said_goodbye = True
                        await stream.send_data(b"".join(out))
                        await stream.send_close()
                        return
                if out:
                    await stream.send_data(b"".join(out))

        def counted(rows: int, nbytes: int) -> None:
            """Count what the client got against its budgets."""
            crossed = policy.count(rows, nbytes)
            # Usage reaches the store every BUDGET_FLUSH_INTERVAL and at once when a budget is
            # crossed; a store write per statement cost more CPU than relaying it.
            if crossed is not None:
                flush_wake.set()
            if crossed is not None:
                audit.submit(
                    "budget.exceeded",
                    actor=user,
                    session_id=session.id,
                    connection=session.connection.name,
                    budget=crossed.budget.name,
                    limit=crossed.limit,
                    rows=crossed.usage.rows,
                    bytes=crossed.usage.bytes,
                    policy_version=policy.version,
                )

        async def stop_result() -> ResultStopper:
            """The running result must not reach the client beyond here: cut it off, and ask
            the server to stop producing it (a late cancel meets an idle server or a statement
            this session refuses anyway)."""
            exceeded = policy.meter.exhausted() if policy.meter is not None else None
            reason = exceeded.message if exceeded else "exfiltration budget exhausted"
            audit.submit(
                "budget.stopped",
                actor=user,
                session_id=session.id,
                connection=session.connection.name,
                budget=exceeded.budget.name if exceeded else None,
                rows=exceeded.usage.rows if exceeded else None,
                bytes=exceeded.usage.bytes if exceeded else None,
                policy_version=policy.version,
            )
            with contextlib.suppress(SessionClosedError):
                await stream.send_signal(SignalKind.CANCEL)
            return ResultStopper(
                error_response(BUDGET_SQLSTATE, reason, severity="ERROR"),
                partial=tracker.partial,
            )

        def forward(piece: bytes, finished: list[StatementFinished]) -> bytes:
            nonlocal stopper
            if stopper is not None:
                piece = stopper.feed(piece)
                if stopper.done:
                    stopper = None
            rows_before = tracker.rows_total
            finished.extend(tracker.server_data(piece))
            if policy.metered:
                counted(tracker.rows_total - rows_before, len(piece))
                if policy.waiving and tracker.idle:
                    policy.unwaive()  # the approved statement's answer is complete
            return piece

        def issue_key(pid: int) -> bytes:
            nonlocal cancel_key
            if cancel_key is not None:  # a second BackendKeyData: the old key goes
                self.cancel_keys.revoke(*cancel_key)
            cancel_key = (pid, self.cancel_keys.issue(session, pid, key_length))
            return cancel_key[1]

        async def agent_to_client() -> str | None:
            nonlocal stopper
            startup = MessageReader()
            in_startup = True
            writer.write(authentication_ok())
            while True:
                event = await stream.receive()
                if isinstance(event, DataReceived):
                    data = event.payload
                    if in_startup:
                        data, in_startup = self._rewrite_startup(startup, data, issue_key)
                        if not in_startup:
                            data += startup.take_buffered()
                    finished: list[StatementFinished] = []
                    if not in_startup:
                        cut = None
                        if policy.metered and stopper is None:
                            cut = policy.stop_offset(data, tracker.partial)
                        if cut is None:
                            data = forward(data, finished)
                        else:  # the budget ends inside this chunk: the rest is stopped
                            head = forward(data[:cut], finished)
                            stopper = await stop_result()
                            data = head + forward(data[cut:], finished)
                    writer.write(data)
                    await writer.drain()
                    progress.set()
                    if finished:
                        record_finished(finished)
                elif isinstance(event, MaskReported):
                    # Counts from the agent, which masked before the data left it.
                    audit.submit(
                        "pg.masked",
                        actor=user,
                        session_id=session.id,
                        connection=session.connection.name,
                        counts=[
                            {"column": c, "detector": d, "count": n} for c, d, n in event.counts
                        ],
                    )
                elif isinstance(event, RemoteClosed):
                    return None
                elif isinstance(event, SessionReset):
                    return event.message

        try:
            async with asyncio.TaskGroup() as tg:
                down = tg.create_task(agent_to_client(), name=f"pg/{session.id}/down")
                up = tg.create_task(client_to_agent(), name=f"pg/{session.id}/up")
                flusher = tg.create_task(
                    policy.run_flusher(flush_wake), name=f"pg/{session.id}/budgets"
                )
                error = await down
                if error is not None:
                    up.cancel()
                    writer.write(
                        error_response(
                            "08006",
                            f"connection {session.connection.name!r}: session ended: {error}",
                        )
                    )
                    with contextlib.suppress(ConnectionError):
                        await writer.drain()
                elif not (up.done() or said_goodbye):
                    # The server closed first (pg_terminate_backend, a session timeout, a
                    # restart). PostgreSQL has no half-open session: after its FATAL a
                    # client waits for end-of-file, and would wait forever for a client
                    # direction nobody will read. So the session ends here, unlike raw TCP,
                    # whose half-close the shared pumps keep (agent/protocols/tcp.py,
                    # gateway/protocols/tcp.py).
                    up.cancel()
                    # The client reads the server's last bytes, then end-of-file, as from a
                    # server that exits; what it still sends is read and dropped (_linger).
                    await _end_output(writer)
                    server_closed = True
                else:
                    await up
                if error is None and (server_closed or tracker.ended_by is not None):
                    # Also when the client was leaving anyway: the FATAL says why it ended.
                    error = (
                        f"the server ended the session: {tracker.ended_by}"
                        if tracker.ended_by is not None
                        else "the server closed the connection"
                    )
                flusher.cancel()
        except* StatementRefused as group:
            refused = group.exceptions[0]
            assert isinstance(refused, StatementRefused)
            error = refused.reason
            # The server drops the part of the batch it holds (nothing of it is committed
            # unless it committed itself); the client is told why, and the session ends.
            await stream.reset(ResetCode.CANCELLED, error)
            # Never inside a server message the client has the start of.
            with contextlib.suppress(ConnectionError):
                if tracker.partial == (b"", 0):
                    if refused.synced:
                        # Its batch answered as a server would (error, ReadyForQuery), so
                        # that the client reports this error; then the session ends.
                        status = "E" if tracker.tx_status in ("T", "E") else "I"
                        writer.write(error_response(READ_ONLY_SQLSTATE, error, severity="ERROR"))
                        writer.write(ready_for_query(status))  # type: ignore[arg-type]
                    writer.write(error_response(READ_ONLY_SQLSTATE, f"session ended: {error}"))
            await _linger(reader, writer)
        except* AuditUnavailable as group:
            # Fail closed: a statement that cannot be recorded is not run.
            error = f"statement not run: {group.exceptions[0]}"
            with contextlib.suppress(ConnectionError):
                writer.write(error_response("58030", error))
            await _linger(reader, writer)
        except* PgProtocolError as group:
            error = f"client protocol violation: {group.exceptions[0]}"
            with contextlib.suppress(ConnectionError):
                writer.write(error_response("08P01", error))
            await _linger(reader, writer)
        except* (ConnectionError, SessionClosedError, ssl.SSLError, OSError) as group:
            error = error or f"connection failed: {group.exceptions[0]}"
            if stream.end_reason is not None:
                # e.g. the credential was revoked while the client was sending: say so.
                with contextlib.suppress(ConnectionError, OSError):
                    writer.write(
                        error_response(
                            "08006",
                            f"connection {session.connection.name!r}: session ended: "
                            f"{stream.end_reason.message}",
                        )
                    )
                    await writer.drain()
        finally:
            if cancel_key is not None:
                self.cancel_keys.revoke(*cancel_key)
            if server_closed:
                await stream.send_close()  # both directions closed: the agent's pump ends
            if not stream.finished:
                await stream.reset(ResetCode.CANCELLED, error or "client went away")
            policy.release()  # the usage outlives the session (and the gateway)
            await self._broker.finish(session, error=error)
        if server_closed:
            # After the session's end is recorded, so that the record says when the server
            # ended it, not when a client that reads nothing was let go.
            await _drain_client(reader)

    async def _review_statement(
        self,
        kind: bytes,
        hold: Hold,
        batch_start: bool,
        approved_parses: dict[str, float],
        held: Callable[[Hold], Awaitable[Refusal | None]],
    ) -> Refusal | None:
        """Hold `hold` for review; None when it may go on to the server."""
        now = time.monotonic()
        if kind == b"P":
            if not hold.budgets and approved_parses.get(hold.text, 0.0) > now:
                return None  # approved earlier in this session, and still valid
            if not batch_start:
                # Refused with the session's end by the caller's mid-batch rule.
                return Refusal(
                    f"policy: {hold.reason}; a statement that needs review cannot be held "
                    "in the middle of a pipeline",
                    hold.text,
                    hold.rules,
                )
        refusal = await held(hold)
        if refusal is None and kind == b"P" and not hold.budgets:
            # A budget's approval is for one statement: the next one asks again.
            approved_parses[hold.text] = time.monotonic() + hold.terms.approval_ttl
        return refusal

    def _session_policy(self, session: Session) -> SessionPolicy:
        """This identity's guardrails and budgets on this connection, following new versions."""
        identity = session.identity
        subject = subject_for(
            self._access, identity.user, identity.groups, machine=identity.is_machine
        )
        return SessionPolicy(self._guardrails, self._budgets, subject, session.connection.name)

    @staticmethod
    def _track(tracker: PgTracker, decoded: FrontendMessage) -> list[StatementStarted]:
        if isinstance(decoded, Query):
            return tracker.query(decoded.text)
        if isinstance(decoded, Parse):
            tracker.parse(decoded.name, decoded.query)
        elif isinstance(decoded, Bind):
            tracker.bind(decoded.portal, decoded.statement, decoded.params, decoded.param_formats)
        elif isinstance(decoded, Execute):
            return [tracker.execute(decoded.portal)]
        elif isinstance(decoded, Close):
            tracker.close(decoded.kind, decoded.name)
        elif isinstance(decoded, Sync):
            tracker.sync()
        return []

    @staticmethod
    def _rewrite_startup(
        frames: MessageReader, data: bytes, issue_key: Callable[[int], bytes]
    ) -> tuple[bytes, bool]:
        """Until the first ReadyForQuery, pass server messages, the BackendKeyData with the
        server's pid and a secret of ours (`gateway.protocols.pgcancel`)."""
        frames.feed(data)
        out: list[bytes] = []
        while (message := frames.next_message()) is not None:
            decoded = decode_backend(message)
            if isinstance(decoded, BackendKeyData):
                out.append(backend_key_data(decoded.pid, issue_key(decoded.pid)))
                continue
            out.append(message.raw)
            if isinstance(decoded, ReadyForQuery):
                return b"".join(out), False
        return b"".join(out), True
