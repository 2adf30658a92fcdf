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
then sends FATAL 42501 and closes lingering (`_end_output`: FIN, then reads until the client hangs
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

The session itself, from AuthenticationOk to its end, is `gateway.protocols.pgsession.PgSession`
(sans-I/O: every rule above about order, refusals, holds, budgets and endings lives there).
It runs on the one relay driver of every front door (`shared.relay`, without half-close):
`_SessionPeer` below is the client's connection as the relay sees it, through the session
(client bytes in, the bytes the session forwards out; agent bytes in, what it orders for the
client out), `_Relay` adds the budget flusher and carries out the session's last orders, and
`judge` is the one call into policy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time

from gateway.audit import Auditor, AuditUnavailable, durable
from gateway.auth import Authenticator, AuthError
from gateway.frontdoor import accept_stream, authenticated
from gateway.policy.budgets import BUDGET_SQLSTATE
from gateway.policy.functions import FunctionCheck
from gateway.policy.grants import AccessPolicy
from gateway.policy.readonly import check_read_only
from gateway.policy.rules import Decision, Policy, SessionGuard, subject_for
from gateway.policystore import BudgetLedger, PolicyView, SessionPolicy, as_view
from gateway.protocols.pgactions import (
    Action,
    AwaitReview,
    CancelReview,
    CancelServer,
    Close,
    CloseToAgent,
    Hold,
    Judge,
    NeedClientData,
    NeedServerIdle,
    OpenReview,
    Record,
    RecordDurably,
    Refusal,
    Request,
    ReviewDecided,
    SendToAgent,
    SendToClient,
    SessionInfo,
    Verdict,
    WakeBudgetFlusher,
)
from gateway.protocols.pgcancel import CancelKeys, SessionKeys, secret_length
from gateway.protocols.pgfunctions import function_check
from gateway.protocols.pgsession import CHECKED, LINGER, PgSession
from gateway.ratelimit import Rejections, peer_host
from gateway.reviews import ReviewService
from gateway.sessions import Session, SessionBroker, SessionError
from gateway.store import StoreUnavailable
from shared.pgwire.backend import (
    authentication_cleartext_password,
    error_response,
    negotiate_protocol_version,
)
from shared.pgwire.errors import PgProtocolError, RemoteProtocolError
from shared.pgwire.frontend import FrontendMessage, Parse, Query
from shared.pgwire.startup import (
    CancelRequest,
    GSSENCRequest,
    SSLRequest,
    StartupMessage,
    parse_startup_packet,
    startup_packet_length,
)
from shared.relay import Ended, Refused, RelayEnd, relay
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
# Startup parameters passed through to the server; user and database are the connection's.
# Class 53, insufficient resources: the address spent its failed attempts (no standard code).
TOO_MANY_FAILURES = "53300"
_NOT_FORWARDED = frozenset({"user", "database", "replication"})

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


async def _end_output(writer: asyncio.StreamWriter) -> None:
    """Flush what was written, then TCP FIN: the client reads it, then end-of-file.

    A socket closed while client bytes wait unread in its receive queue, or that receives
    bytes after it is closed, answers with a TCP RST, and an RST makes the client's kernel
    drop what the client has not read yet: the error that ends its session. A client in a
    pipeline keeps sending after the message the gateway refused, so a session the gateway
    ends flushes its error, ends our direction (FIN) and then reads and drops what the
    client still sends (`_drain_client`) before it closes: a lingering close.
    """
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
        await _Relay(self, reader, writer, session, key_length).run()

    def _session_policy(self, session: Session) -> SessionPolicy:
        """This identity's guardrails and budgets on this connection, following new versions."""
        identity = session.identity
        subject = subject_for(
            self._access, identity.user, identity.groups, machine=identity.is_machine
        )
        return SessionPolicy(self._guardrails, self._budgets, subject, session.connection.name)


async def judge(
    policy: SessionPolicy, functions: FunctionCheck | None, read_only: bool, asked: Judge
) -> Verdict:
    """Read-only access and guardrails (of the version in force, with the catalog behind
    them: `functions`), then budgets; a statement held for review is held only when its
    budget allows it to run."""
    guard = policy.current()  # a new policy version applies from here on
    kind, decoded = asked.kind, asked.decoded
    hold: Hold | None = None
    if (read_only or guard is not None) and kind in CHECKED:
        # The guardrails with the catalog behind them (volatile user functions).
        decision: Decision | None = None
        if guard is not None and functions is not None and isinstance(decoded, Query | Parse):
            decision = await functions.check(guard, _sql_text(decoded))
        verdict = _refusal(kind, decoded, read_only, guard, decision)
        if isinstance(verdict, Refusal):
            return verdict
        hold = verdict
    # Budgets: a statement to be parsed or run; a Bind mid-batch follows a Parse judged
    # already.
    if not policy.metered or kind == b"F" or (kind == b"B" and not asked.batch_start):
        return hold
    exceeded = await policy.exhausted()
    if exceeded is None:
        return hold
    text = getattr(decoded, "text", None) or getattr(decoded, "query", "")
    terms = exceeded.budget.review
    if terms is not None:  # only budgets that ask are exhausted (stopping ones win)
        if hold is not None:
            # Held once, on the rule's terms; its result is then still cut by the budget
            # (an approval of the rule does not stand for the budget's).
            return hold
        reason = f"{exceeded.message}; running it needs approval"
        return Hold(reason, str(text), (), terms, budgets=policy.asking())
    return Refusal(
        exceeded.message, str(text), sqlstate=BUDGET_SQLSTATE, budget=exceeded.budget.name
    )


class _Relay:
    """One `PgSession` on the relay driver (`shared.relay`), with the client's socket as
    the peer (`_SessionPeer`) and the audit log, the judge and reviews behind it. The session
    alone decides how it ends (its `Close`); `run` carries out the last orders and records
    the end."""

    def __init__(
        self,
        door: PostgresFrontDoor,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        session: Session,
        key_length: int,
    ) -> None:
        self._door = door
        self._reader = reader
        self._writer = writer
        self._session = session
        self._stream = session.stream
        self._policy = door._session_policy(session)
        identity = session.identity
        self.pg = PgSession(
            SessionInfo(
                session.id,
                identity.user,
                tuple(identity.groups),
                session.connection.name,
                record_params=session.connection.options.get("record_params") == "true",
                reviews=door._reviews is not None,
            ),
            self._policy,
            SessionKeys(door.cancel_keys, session, key_length),
            time.monotonic,
        )
        self._flush_wake = asyncio.Event()  # a budget was crossed: move usage to the store now
        self._peer = _SessionPeer(self)

    async def run(self) -> None:
        pg, sid = self.pg, self._session.id
        close: Close | None = None
        try:
            await self._peer.do(pg.start())
            async with asyncio.TaskGroup() as tg:
                flusher = tg.create_task(
                    self._policy.run_flusher(self._flush_wake), name=f"pg/{sid}/budgets"
                )
                end = await relay(
                    self._stream,
                    self._peer,
                    half_close=False,  # PostgreSQL has no half-open session
                    name=f"pg/{sid}",
                    who="client",
                    describe=self._peer.reset_seen,
                    on_report=self._peer.report,
                )
                flusher.cancel()
            close = self._peer.ending(end)
            await self._last_orders(close)
        finally:
            await self._finish(close)
        if close.drain_after:
            await _drain_client(self._reader)

    async def _last_orders(self, close: Close) -> None:
        writer = self._writer
        if close.reset_agent_first is not None and not self._stream.finished:
            await self._stream.reset(ResetCode.CANCELLED, close.reset_agent_first)
        if close.to_client:
            with contextlib.suppress(ConnectionError, OSError, ssl.SSLError):
                writer.write(close.to_client)
                if not close.end_output:
                    await writer.drain()
        if close.end_output:
            await _end_output(writer)
        if close.linger:
            await _drain_client(self._reader)

    async def _finish(self, close: Close | None) -> None:
        stream, pg = self._stream, self.pg
        error = close.error if close is not None else None
        if pg.cancel_key is not None:
            self._door.cancel_keys.revoke(*pg.cancel_key)
        if not stream.finished:  # the relay ends the stream; a cancelled run may not have
            await stream.reset(ResetCode.CANCELLED, error or "client went away")
        self._policy.release()  # the usage outlives the session (and the gateway)
        await self._door._broker.finish(self._session, error=error)


class _SessionPeer:
    """The client's connection as the relay's peer, through the session: `read` answers the
    session's requests (client bytes, the judge, durable records, reviews) until it has
    bytes for the agent; `write` gives the agent's bytes to the session and writes on what
    it orders for the client. Where the session ends itself, the relay is told `Refused`;
    the session's `Close` then says what the client still gets (`ending`)."""

    def __init__(self, driver: _Relay) -> None:
        door, session = driver._door, driver._session
        self._door = door
        self._session = session
        self._reader = driver._reader
        self._writer = driver._writer
        self._stream = session.stream
        self._policy = driver._policy
        self._flush_wake = driver._flush_wake
        self._read_only = session.access == "read-only"
        self._functions = function_check(door._broker, session)
        self.pg = driver.pg
        self._to_agent: list[bytes] = []
        self._client_done = False  # the session ordered CloseToAgent
        self._progress = asyncio.Event()  # set whenever server data reached the client
        self._failure: str | None = None  # why the client's connection failed
        self._reset: SessionReset | None = None

    # ---- the relay's Peer --------------------------------------------------------------

    async def read(self) -> bytes | None:
        pg = self.pg
        try:
            while True:
                if self._to_agent:
                    # Before the next request: it may wait for the server to answer these.
                    data = b"".join(self._to_agent)
                    self._to_agent.clear()
                    return data
                if self._client_done:
                    return None
                request = pg.client_request
                assert request is not None and pg.ending is None
                try:
                    actions = await self._answer(request)
                except AuditUnavailable as exc:
                    # Fail closed: a statement that cannot be recorded is not run.
                    actions = pg.audit_failed(str(exc))
                await self.do(actions)
        except OSError as exc:
            self._failure = str(exc) or type(exc).__name__
            raise

    async def write(self, data: bytes) -> None:
        try:
            await self.do(self.pg.agent_event(DataReceived(data)))
        except OSError as exc:
            self._failure = str(exc) or type(exc).__name__
            raise
        self._progress.set()

    async def write_eof(self) -> None:
        raise AssertionError("a PostgreSQL session has no half-close")

    async def wait_gone(self) -> None:
        raise AssertionError("a PostgreSQL session has no half-close")

    async def report(self, event: MaskReported) -> None:
        await self.do(self.pg.agent_event(event))

    def reset_seen(self, event: SessionReset) -> str:
        self._reset = event
        return event.message

    # ---- the session's orders ----------------------------------------------------------

    async def do(self, actions: list[Action]) -> None:
        writer = self._writer
        for action in actions:
            kind = type(action)
            if kind is SendToClient:
                assert isinstance(action, SendToClient)
                writer.write(action.data)
                await writer.drain()
                if action.from_server:
                    self.pg.client_flushed()  # the tunnel's credit goes back at the next read
            elif kind is SendToAgent:
                assert isinstance(action, SendToAgent)
                self._to_agent.append(action.data)  # `read` hands them to the relay
            elif kind is Record:
                assert isinstance(action, Record)
                self._door._audit.submit(action.kind, **action.fields)
            elif kind is CloseToAgent:
                self._client_done = True  # `read` answers end-of-file after the last bytes
            elif kind is CancelServer:
                # A tunnel call from inside the relay's direction: not cancelled halfway
                # (that would cancel the agent's whole call, rule 5 of shared.relay).
                await asyncio.shield(self._cancel_server())
            elif kind is WakeBudgetFlusher:
                self._flush_wake.set()
            elif kind is Close:
                assert isinstance(action, Close)
                # The session ended itself: its last words go after the relay (`ending`).
                raise Refused(action.error or "the session ended", ResetCode.CANCELLED)

    async def _cancel_server(self) -> None:
        with contextlib.suppress(SessionClosedError):
            await self._stream.send_signal(SignalKind.CANCEL)

    def ending(self, end: RelayEnd) -> Close:
        """The session's end, once the relay is over: its own, or the relay's told to it."""
        pg = self.pg
        if pg.ending is None:
            if end.ended in (Ended.TUNNEL_CLOSED, Ended.PEER_CLOSED, Ended.BOTH_CLOSED):
                pg.agent_event(RemoteClosed())  # it says whether the client or server ended
            elif end.ended is Ended.TUNNEL_RESET and self._reset is not None:
                pg.agent_event(self._reset)
            else:
                agent_end = self._stream.end_reason if end.ended is Ended.TUNNEL_RESET else None
                pg.connection_failed(
                    self._failure or end.reason, agent_end.message if agent_end else None
                )
        assert pg.ending is not None
        return pg.ending

    async def _answer(self, request: Request) -> list[Action]:
        """Do what the client side asked for; the session's answer to the result."""
        pg = self.pg
        if isinstance(request, NeedClientData):
            if request.until is None:
                return pg.client_data(await self._reader.read(READ_SIZE))
            try:
                async with asyncio.timeout(max(0.0, request.until - time.monotonic())):
                    data = await self._reader.read(READ_SIZE)
            except TimeoutError:
                return pg.timer_expired()
            return pg.client_data(data)
        if isinstance(request, Judge):
            verdict = await judge(self._policy, self._functions, self._read_only, request)
            return pg.judged(verdict)
        if isinstance(request, RecordDurably):
            audit = self._door._audit
            queued = [audit.queue(r.kind, **r.fields) for r in request.records]
            return pg.recorded(tuple(event.seq for event in await durable(queued)))
        if isinstance(request, NeedServerIdle):
            while not pg.server_idle:
                self._progress.clear()
                await self._progress.wait()
            return pg.resume()
        if isinstance(request, OpenReview):
            return pg.review_opened(await self._open_review(request.hold))
        if isinstance(request, AwaitReview):
            return pg.review_decided(await self._await_review(request.review_id))
        assert isinstance(request, CancelReview)
        reviews = self._door._reviews
        assert reviews is not None
        await reviews.cancel(request.review_id, request.reason)
        return pg.resume()

    async def _open_review(self, hold: Hold) -> str | None:
        reviews, session = self._door._reviews, self._session
        assert reviews is not None
        try:
            review = await reviews.hold(
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
            log.exception("session %s: cannot create a review", session.id)
            return None
        return review.id

    async def _await_review(self, review_id: str) -> ReviewDecided:
        reviews, holding, sid = self._door._reviews, self._door._holding, self._session.id
        assert reviews is not None
        withdrawn = holding[sid] = asyncio.Event()
        try:
            decided = await reviews.wait_for_client(
                review_id, left=withdrawn.wait(), gone=self._reader.at_eof, check=CLIENT_CHECK
            )
        except asyncio.CancelledError:
            # The session is ending: nobody is left to run the statement.
            await asyncio.shield(reviews.cancel(review_id, "the session ended"))
            raise
        finally:
            holding.pop(sid, None)
        gone = self._reader.at_eof()
        if decided is None:
            return ReviewDecided(None, client_gone=gone)
        return ReviewDecided(decided.status, decided.decision or "", client_gone=gone)
