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
then sends FATAL 42501 and closes lingering (`pgrelay.end_output`: FIN, then reads until the
client hangs up), so that no TCP reset destroys the error before the client reads it.

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
agent; the counts it reports with the data are audited
in the `pg.result` of the statement they end (`pg.masked` from an older agent).

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
(sans-I/O: every rule above about order, refusals, holds, budgets and endings lives there),
run on the one relay driver of every front door (`shared.relay`) by
`gateway.protocols.pgrelay`, which also holds `judge`, the one call into policy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl

from gateway.audit import Auditor, AuditUnavailable
from gateway.auth import Authenticator, AuthError
from gateway.fleet.bus import Bus
from gateway.frontdoor import accept_stream, authenticated
from gateway.policy.grants import AccessPolicy
from gateway.policy.rules import Policy, subject_for
from gateway.policystore import BudgetLedger, PolicyView, SessionPolicy, as_view
from gateway.protocols.pgcancel import CancelKeys, secret_length
from gateway.protocols.pgfleet import FleetCancels
from gateway.protocols.pgrelay import PgRelay
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
from shared.pgwire.startup import (
    CancelRequest,
    GSSENCRequest,
    SSLRequest,
    StartupMessage,
    parse_startup_packet,
    startup_packet_length,
)
from shared.tunnel.frames import SignalKind
from shared.tunnel.stream import SessionClosedError

log = logging.getLogger(__name__)

STARTUP_TIMEOUT = 30.0
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
    "draining": "57P01",  # this gateway is shutting down (admin_shutdown)
}


class ClientGone(Exception):
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
        bus: Bus | None = None,  # the fleet's: cancels for keys other members issued
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
        self._fleet = (
            None if bus is None else FleetCancels(bus, self.cancel_keys, self._cancel_session)
        )

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
        if session is not None:
            await self._cancel_session(session, client)
            return
        if self._fleet is not None and await self._fleet.cancel(
            request.pid, request.secret, client, CANCEL_TIMEOUT
        ):
            return  # another member held the key and has acted
        await self._audit.record("pg.cancel_refused", client=client, reason="unknown key")

    async def _cancel_session(self, session: Session, client: str) -> None:
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
        await PgRelay(self, reader, writer, session, key_length).run()

    def _session_policy(self, session: Session) -> SessionPolicy:
        """This identity's guardrails and budgets on this connection, following new versions."""
        identity = session.identity
        subject = subject_for(
            self._access, identity.user, identity.groups, machine=identity.is_machine
        )
        return SessionPolicy(self._guardrails, self._budgets, subject, session.connection.name)
