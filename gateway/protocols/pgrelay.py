"""The PostgreSQL session (`gateway.protocols.pgsession.PgSession`) on the one relay driver of
every front door (`shared.relay`, without half-close: PostgreSQL has no half-open session).

`SessionPeer` is the client's connection as the relay sees it, through the session: `read`
answers what the session's client side asks for (client bytes, the judge's verdict, a durable
record before a statement is forwarded, the server going idle, a review while the client
waits) until the session has bytes for the agent, and `write` hands the agent's bytes to the
session and writes on what it orders for the client, flushed before the relay reads the agent
again (the session's read-ahead is the tunnel's window). The agent's masking counts arrive
through `on_report`. Where the session ends itself (a statement that could not be recorded, a
refusal mid-pipeline, a protocol violation either way, a client gone while held) the peer
raises `Refused` and the relay resets the agent's stream; where the relay ends (the server's
close, the client's, a reset, a failed connection) the session is told and decides why.
`PgRelay` then carries out the session's last orders (its error, end-of-file, a lingering
close) and records the end. `judge` is the one call into policy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from typing import TYPE_CHECKING

from gateway.audit import AuditUnavailable, durable
from gateway.policy.budgets import BUDGET_SQLSTATE
from gateway.policy.functions import FunctionCheck
from gateway.policy.lineage_check import LineageCheck
from gateway.policy.readonly import check_read_only
from gateway.policy.rules import Decision, SessionGuard
from gateway.policystore import SessionPolicy
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
from gateway.protocols.pgcancel import SessionKeys
from gateway.protocols.pgfunctions import function_check, lineage_check
from gateway.protocols.pgsession import CHECKED, LINGER, PgSession
from gateway.sessions import Session
from shared.pgwire.frontend import FrontendMessage, Parse, Query
from shared.relay import Ended, Refused, RelayEnd, relay
from shared.tunnel.frames import ResetCode, SignalKind
from shared.tunnel.stream import (
    DataReceived,
    MaskReported,
    RemoteClosed,
    SessionClosedError,
    SessionReset,
)

if TYPE_CHECKING:
    from gateway.protocols.postgres import PostgresFrontDoor

log = logging.getLogger(__name__)

CLIENT_CHECK = 1.0  # seconds between looks for a client that hung up while held
READ_SIZE = 64 * 1024


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


async def end_output(writer: asyncio.StreamWriter) -> None:
    """Flush what was written, then TCP FIN: the client reads it, then end-of-file.

    A socket closed while client bytes wait unread in its receive queue, or that receives
    bytes after it is closed, answers with a TCP RST, and an RST makes the client's kernel
    drop what the client has not read yet: the error that ends its session. A client in a
    pipeline keeps sending after the message the gateway refused, so a session the gateway
    ends flushes its error, ends our direction (FIN) and then reads and drops what the
    client still sends (`drain_client`) before it closes: a lingering close.
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


async def drain_client(reader: asyncio.StreamReader) -> None:
    """Read and drop what the client still sends, until it hangs up or LINGER seconds pass."""
    with contextlib.suppress(ConnectionError, OSError, ssl.SSLError, TimeoutError):
        async with asyncio.timeout(LINGER):
            while await reader.read(READ_SIZE):
                pass


async def judge(
    policy: SessionPolicy,
    functions: FunctionCheck | None,
    read_only: bool,
    asked: Judge,
    lineage: LineageCheck | None = None,
) -> Verdict:
    """Read-only access and guardrails (of the version in force, with the catalog behind
    them: `functions`), then the masked columns' inference check (`lineage`), then budgets;
    a statement held for review is held only when its budget allows it to run."""
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
    if lineage is not None and policy.masking and isinstance(decoded, Query | Parse):
        sql = _sql_text(decoded)
        checked = await lineage.check(lineage.rules(policy.masking), sql)
        if checked.refusal is not None:
            return Refusal(checked.refusal, sql, checked.rules)
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


class PgRelay:
    """One `PgSession` on the relay driver (`shared.relay`), with the client's socket as
    the peer (`SessionPeer`) and the audit log, the judge and reviews behind it. The session
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
        self._peer = SessionPeer(self)

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
            await drain_client(self._reader)

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
            await end_output(writer)
        if close.linger:
            await drain_client(self._reader)

    async def _finish(self, close: Close | None) -> None:
        stream, pg = self._stream, self.pg
        error = close.error if close is not None else None
        if pg.cancel_key is not None:
            self._door.cancel_keys.revoke(*pg.cancel_key)
        if not stream.finished:  # the relay ends the stream; a cancelled run may not have
            await stream.reset(ResetCode.CANCELLED, error or "client went away")
        self._policy.release()  # the usage outlives the session (and the gateway)
        await self._door._broker.finish(self._session, error=error)


class SessionPeer:
    """The client's connection as the relay's peer, through the session: `read` answers the
    session's requests (client bytes, the judge, durable records, reviews) until it has
    bytes for the agent; `write` gives the agent's bytes to the session and writes on what
    it orders for the client. Where the session ends itself, the relay is told `Refused`;
    the session's `Close` then says what the client still gets (`ending`)."""

    def __init__(self, driver: PgRelay) -> None:
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
        self._lineage = lineage_check(door._broker, session)
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
            else:  # the client's connection failed
                pg.connection_failed(self._failure or end.reason)
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
            verdict = await judge(
                self._policy, self._functions, self._read_only, request, self._lineage
            )
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
