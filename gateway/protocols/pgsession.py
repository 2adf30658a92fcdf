"""One PostgreSQL session between a client and its agent, as a state machine (sans-I/O).

Events in: the client's bytes (`client_data`), the agent's events (`agent_event`: data,
masking counts, its close or reset), and the answers to what the session asked for (the
judge's verdict, the audit seqs of recorded statements, a review's decision, a timer, the
client's end). Actions out: bytes for the client (`SendToClient`) or the agent
(`SendToAgent`), events to record (`Record`, submitted; `RecordDurably`, awaited), a cancel
for the server, and once, `Close` (all of them in `gateway.protocols.pgactions`). The
driver (`gateway.protocols.pgrelay`, on the shared relay) does the I/O.

Two directions run side by side, as the relay's two tasks, each asking the session for its
next step:
- the client's side is a generator that yields one `Request` at a time (`client_request`:
  more client bytes, a verdict, a durable record, the server to go idle, a review) and is
  resumed with the answer; while it waits for anything but client bytes, the client is not
  read ahead (a held statement holds everything the client sends after it);
- the server's side is `agent_event`, which answers at once. After server bytes, the
  session wants no more from the agent until the driver reports them flushed to the client
  (`client_flushed`): the tunnel's credit goes back only then, so a client that stops
  reading stops the server within the session's window.

Rules:
1. A statement is recorded durably before it is forwarded (`RecordDurably`); what the client
   sent before it goes first.
2. A refusal is answered in the server's place and in order: once the server is idle (all
   earlier answers reached the client), recorded durably, then ErrorResponse and, for a
   Query, ReadyForQuery (a Parse or Bind: at the client's Sync, as the server would, after
   dropping the rest of the batch). A refused or held Parse in a batch the server already
   holds part of cannot keep the order: the session ends (fail closed), after the client's
   batch is read to its Sync (at most LINGER seconds), so that a pipelining client reads the
   refusal as the answer to its batch.
3. A held statement: the server goes idle first, then the review is opened, the client gets
   a NoticeResponse naming it, and the session waits for the decision. Approved, the
   statement goes on as if it had just arrived; denied or timed out, it is refused (rule 2);
   withdrawn by the client's cancel, refused with 57014; the client gone, the session ends.
4. Budgets count the server's answers the client gets: rows and bytes forwarded after
   startup, not the gateway's own messages (refusals, notices, the error that stops a
   result). A result is stopped before the first row a budget has no room for.
5. One place ends the session (`_end`), once, with the reason recorded: the client's
   Terminate or end-of-file followed by the agent's close (a clean end; the server's FATAL,
   if it sent one, is the reason), the server's end while the client is still there
   (PostgreSQL has no half-open session: the client gets what the server sent, then
   end-of-file), the agent's reset, a refusal that ends it (rule 2), a statement that could
   not be recorded, a client protocol violation, or a lost connection.
6. A gateway that drains ends what is left after its grace period by resetting the stream
   with GATEWAY_SHUTDOWN: the client gets FATAL 57P01 (as from a server's
   `pg_terminate_backend` or shutdown) saying so, then end-of-file (lingering), never a bare
   end-of-file; the reason recorded is the reset's ("gateway shutting down").
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

from gateway.policy.budgets import BUDGET_SQLSTATE, ResultStopper
from gateway.policy.readonly import READ_ONLY_SQLSTATE
from gateway.protocols.pgactions import (
    Action,
    AwaitReview,
    Budgets,
    CancelReview,
    CancelServer,
    Close,
    CloseToAgent,
    Hold,
    Judge,
    KeyIssuer,
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
from gateway.protocols.pgtrack import PgTracker, StatementFinished, StatementStarted
from shared.pgwire import frontend
from shared.pgwire.backend import (
    BackendKeyData,
    ReadyForQuery,
    authentication_ok,
    backend_key_data,
    decode_backend,
    error_response,
    notice_response,
    ready_for_query,
)
from shared.pgwire.errors import PgProtocolError
from shared.pgwire.framing import Message, MessageReader
from shared.pgwire.frontend import (
    Bind,
    Execute,
    FrontendMessage,
    Parse,
    Query,
    Sync,
    decode_frontend,
)
from shared.tunnel.frames import ResetCode
from shared.tunnel.session import DataReceived, MaskReported, RemoteClosed, SessionReset

# Seconds a session the gateway ends keeps reading what the client still sends (rule 2).
LINGER = 2.0

# Messages that carry SQL (simple Query, extended Parse) or bypass it (fastpath call) ...
CHECKED = frozenset((b"Q", b"P", b"F"))
# ... and Bind, which runs a statement prepared earlier (budgets judge it).
JUDGED = CHECKED | {b"B"}
_FRONTEND_TRACKED = frozenset(b"QPBECSX")


class _Over(Exception):
    """The client side stops: the session has ended (raised inside the generator)."""


@dataclass
class _Down:
    """The server's side."""

    startup: MessageReader = field(default_factory=MessageReader)
    in_startup: bool = True
    stopper: ResultStopper | None = None
    unflushed: bool = False  # server bytes handed to the driver, not yet written on


class PgSession:
    def __init__(
        self,
        info: SessionInfo,
        budgets: Budgets,
        keys: KeyIssuer,
        clock: Callable[[], float],
    ) -> None:
        self.info = info
        self._budgets = budgets
        self._keys = keys
        self._clock = clock
        self.tracker = PgTracker(clock, record_params=info.record_params)
        self.cancel_key: tuple[int, bytes] | None = None  # handed to the client
        self.ending: Close | None = None
        self._out: list[Action] = []
        self._seqs: dict[int, int] = {}  # statement index -> audit seq of its pg.statement
        self._masked: tuple[tuple[str, str, int], ...] = ()  # counts of the next server bytes
        self._approved_parses: dict[str, float] = {}  # Parse text -> when its approval expires
        self._frames = MessageReader()
        self._down = _Down()
        self.client_done = False  # the client sent Terminate or hung up
        self._resuming = False  # inside the client side's generator
        self._client: Generator[Request, Any, None] | None = self._client_side()
        self.client_request: Request | None = next(self._client)

    # ---- status ------------------------------------------------------------------------

    @property
    def server_idle(self) -> bool:
        return self.tracker.idle

    @property
    def reading_agent(self) -> bool:
        """The session takes the agent's next event: the last server bytes were written on."""
        return self.ending is None and not self._down.unflushed

    @property
    def reading_client(self) -> bool:
        return self.ending is None and isinstance(self.client_request, NeedClientData)

    def start(self) -> list[Action]:
        """The session is open at the agent: the client's authentication is done."""
        return [SendToClient(authentication_ok())]

    # ---- the client's side -------------------------------------------------------------

    def client_data(self, data: bytes) -> list[Action]:
        """Bytes from the client; b"" at its end-of-file."""
        return self._answer(NeedClientData, data)

    def timer_expired(self) -> list[Action]:
        """`NeedClientData.until` passed before the client sent what the session waited for."""
        return self._answer(NeedClientData, None)

    def judged(self, verdict: Verdict) -> list[Action]:
        return self._answer(Judge, verdict)

    def recorded(self, seqs: tuple[int, ...]) -> list[Action]:
        return self._answer(RecordDurably, seqs)

    def review_opened(self, review_id: str | None) -> list[Action]:
        return self._answer(OpenReview, review_id)

    def review_decided(self, decided: ReviewDecided) -> list[Action]:
        return self._answer(AwaitReview, decided)

    def _answer(self, asked: type[Request], answer: object) -> list[Action]:
        if self.ending is None:
            assert isinstance(self.client_request, asked), (asked, self.client_request)
        return self.resume(answer)

    def resume(self, answer: object = None) -> list[Action]:
        """Answer the client side's request (`client_request`); the actions that follow."""
        if self._client is not None and self.ending is None:
            self._resuming = True
            try:
                self.client_request = self._client.send(answer)
            except StopIteration:
                self._client, self.client_request = None, None
            except _Over:
                self._client, self.client_request = None, None
            except PgProtocolError as exc:
                self._client, self.client_request = None, None
                error = f"client protocol violation: {exc}"
                self._end(
                    Close(
                        "protocol",
                        error,
                        to_client=error_response("08P01", error),
                        end_output=True,
                        linger=True,
                    )
                )
            finally:
                self._resuming = False
        return self._take()

    def _client_side(self) -> Generator[Request, Any, None]:
        frames = self._frames
        discarding = False  # after a refused Parse or Bind: skip to Sync, as the server would
        batch_start = True  # nothing of the current extended-protocol batch forwarded
        while True:
            data = yield NeedClientData()
            if not data:
                self.client_done = True
                self._emit(CloseToAgent())
                return
            frames.feed(data)
            out: list[bytes] = []

            while (message := frames.next_message()) is not None:
                if discarding:
                    if message.type == b"S":
                        discarding, batch_start = False, True
                        self._emit(SendToClient(ready_for_query(self.tracker.tx_status)))  # type: ignore[arg-type]
                    continue
                # Decoded once, for the checks and the recording alike.
                tracked = message.type[0] in _FRONTEND_TRACKED
                decoded = decode_frontend(message) if tracked else None
                if message.type in JUDGED:
                    verdict = yield Judge(message.type, decoded, batch_start)
                    if isinstance(verdict, Hold):
                        self._flush(out)  # what came before goes first, held or not
                        hold = verdict
                        verdict = yield from self._review(message.type, hold, batch_start)
                        if verdict is None and hold.budgets:
                            # Its result runs past those budgets until the server is idle
                            # again; it is still counted.
                            self._budgets.waive(hold.budgets)
                    if verdict is not None:
                        self._flush(out)
                        if message.type == b"P" and not batch_start:
                            yield from self._refused_mid_batch(verdict)
                        yield from self._refuse(message, verdict)
                        discarding = message.type in (b"P", b"B")
                        continue
                if message.type in b"SQ":
                    batch_start = True
                elif message.type in b"PBDEHC":
                    batch_start = False
                if decoded is not None:
                    started = self._track(decoded)
                    if started:
                        self._flush(out)
                        # Durably recorded before the statement leaves the gateway (rule 1).
                        seqs = yield RecordDurably(tuple(self._statement(st) for st in started))
                        for st, seq in zip(started, seqs, strict=True):
                            self._seqs[st.index] = seq
                out.append(message.raw)
                if message.type == b"X":
                    self.client_done = True
                    self._flush(out)
                    self._emit(CloseToAgent())
                    return
            self._flush(out)

    def _flush(self, out: list[bytes]) -> None:
        if out:
            self._emit(SendToAgent(b"".join(out)))
            out.clear()

    def _server_idle(self) -> Generator[Request, Any, None]:
        while not self.tracker.idle:
            yield NeedServerIdle()

    def _refuse(self, message: Message, refusal: Refusal) -> Generator[Request, Any, None]:
        """Answer a refused statement in place of the server, in order (rule 2)."""
        yield from self._server_idle()  # earlier answers reach the client before our error
        yield RecordDurably((self._refusal_record(refusal),))
        data = error_response(refusal.sqlstate, refusal.reason, severity="ERROR")
        if message.type not in (b"P", b"B"):  # ReadyForQuery comes at the client's Sync
            data += ready_for_query(self.tracker.tx_status)  # type: ignore[arg-type]
        self._emit(SendToClient(data))

    def _refused_mid_batch(self, refusal: Refusal) -> Generator[Request, Any, None]:
        """Part of this batch is already at the server: no answer of ours can keep the
        order, so the session ends (rule 2). Never returns."""
        yield RecordDurably((self._refusal_record(refusal, ended_session=True),))
        synced = yield from self._until_sync()
        reason = refusal.reason
        to_client = b""
        # Never inside a server message the client has the start of.
        if self.tracker.partial == (b"", 0):
            if synced:
                # Its batch answered as a server would (error, ReadyForQuery), so that the
                # client reports this error; then the session ends.
                status = "E" if self.tracker.tx_status in ("T", "E") else "I"
                to_client += error_response(READ_ONLY_SQLSTATE, reason, severity="ERROR")
                to_client += ready_for_query(status)  # type: ignore[arg-type]
            to_client += error_response(READ_ONLY_SQLSTATE, f"session ended: {reason}")
        # The server drops the part of the batch it holds (nothing of it is committed unless
        # it committed itself); the client is told why.
        self._end(
            Close(
                "refused",
                reason,
                reset_agent_first=reason,
                to_client=to_client,
                end_output=True,
                linger=True,
            )
        )
        raise _Over

    def _until_sync(self) -> Generator[Request, Any, bool]:
        """Drop what the client sends up to the end of its batch; True at its Sync, False
        when it hangs up, sends Terminate or LINGER seconds pass first. A pipelining client
        (psycopg) takes an error as the answer to its batch only once it has sent the whole
        batch and reads up to the ReadyForQuery that ends it; told earlier, or cut off
        before that, it reports the lost connection instead."""
        until = self._clock() + LINGER
        while True:
            while (message := self._frames.next_message()) is not None:
                if message.type in b"SX":
                    return message.type == b"S"
            data = yield NeedClientData(until)
            if not data:
                return False
            self._frames.feed(data)

    def _review(
        self, kind: bytes, hold: Hold, batch_start: bool
    ) -> Generator[Request, Any, Refusal | None]:
        """Hold `hold` for review; None when it may go on to the server (rule 3)."""
        if kind == b"P":
            if not hold.budgets and self._approved_parses.get(hold.text, 0.0) > self._clock():
                return None  # approved earlier in this session, and still valid
            if not batch_start:
                # Refused with the session's end by the mid-batch rule.
                return Refusal(
                    f"policy: {hold.reason}; a statement that needs review cannot be held "
                    "in the middle of a pipeline",
                    hold.text,
                    hold.rules,
                )
        refusal = yield from self._held(hold)
        if refusal is None and kind == b"P" and not hold.budgets:
            # A budget's approval is for one statement: the next one asks again.
            self._approved_parses[hold.text] = self._clock() + hold.terms.approval_ttl
        return refusal

    def _held(self, hold: Hold) -> Generator[Request, Any, Refusal | None]:
        if not self.info.reviews:
            return Refusal(
                f"policy: {hold.reason}; approvals are not enabled on this gateway",
                hold.text,
                hold.rules,
            )
        yield from self._server_idle()  # our notice must not land inside a server message
        review_id = yield OpenReview(hold)
        if review_id is None:  # fail closed: without a stored review nobody could approve it
            return Refusal(
                f"policy: {hold.reason}; the review could not be created", hold.text, hold.rules
            )
        self._emit(
            SendToClient(
                notice_response(
                    "00000",
                    f"statement held for review {review_id}: {hold.reason}",
                    detail=f"waiting up to {hold.terms.timeout}s for "
                    f"{hold.terms.required} approval(s)",
                    hint=f"another person approves with: wardgate reviews approve {review_id}",
                )
            )
        )
        decided: ReviewDecided = yield AwaitReview(review_id)
        budget = hold.budgets[0] if hold.budgets else None
        if decided.status is None and decided.client_gone:
            yield CancelReview(review_id, "the client went away")
            self._client_gone_while_held()
        if decided.status is None:
            yield CancelReview(review_id, "cancelled by the client")
            return Refusal(
                f"canceling statement due to user request: review {review_id} withdrawn",
                hold.text,
                hold.rules,
                sqlstate="57014",
                budget=budget,
            )
        if decided.status == "approved" and decided.client_gone:
            # The client hung up while it waited: run nothing on its behalf.
            self._client_gone_while_held()
        if decided.status == "approved":
            return None
        outcome = {"denied": "was denied", "expired": "timed out"}.get(
            decided.status, f"was {decided.status}"
        )
        return Refusal(
            f"policy: review {review_id} {outcome} ({decided.decision}); statement not run",
            hold.text,
            hold.rules,
            sqlstate=BUDGET_SQLSTATE if budget else READ_ONLY_SQLSTATE,
            budget=budget,
        )

    def _client_gone_while_held(self) -> None:
        self._failed("the client went away while its statement was held")
        raise _Over

    def _track(self, decoded: FrontendMessage) -> list[StatementStarted]:
        tracker = self.tracker
        if isinstance(decoded, Query):
            return tracker.query(decoded.text)
        if isinstance(decoded, Parse):
            tracker.parse(decoded.name, decoded.query)
        elif isinstance(decoded, Bind):
            tracker.bind(decoded.portal, decoded.statement, decoded.params, decoded.param_formats)
        elif isinstance(decoded, Execute):
            return [tracker.execute(decoded.portal)]
        elif isinstance(decoded, frontend.Close):
            tracker.close(decoded.kind, decoded.name)
        elif isinstance(decoded, Sync):
            tracker.sync()
        return []

    # ---- the server's side -------------------------------------------------------------

    def agent_event(self, event: object) -> list[Action]:
        """An event of the agent's stream (`shared.tunnel.session`)."""
        if self.ending is not None:
            return []
        if isinstance(event, DataReceived):
            assert not self._down.unflushed, "server bytes read before the last were written"
            try:
                self._server_data(event.payload)
            except PgProtocolError as exc:  # the server (or the agent) broke the protocol
                error = f"server protocol violation: {exc}"
                self._end(Close("agent", error, to_client=error_response("08P01", error)))
        elif isinstance(event, MaskReported) and event.with_data:
            # Counts of the bytes that come next: they go into the record of the last
            # statement those bytes finish (one audit event per statement, not two).
            self._masked = event.counts
        elif isinstance(event, MaskReported):
            # Counts from the agent, which masked before the data left it.
            self._emit(self._masked_record(event.counts))
        elif isinstance(event, RemoteClosed):
            self._agent_closed()
        elif isinstance(event, SessionReset) and _gateway_shutdown(event):
            self._shut_down(event.message)
        elif isinstance(event, SessionReset):
            self._end(
                Close(
                    "agent",
                    event.message,
                    to_client=error_response(
                        "08006",
                        f"connection {self.info.connection!r}: session ended: {event.message}",
                    ),
                )
            )
        return self._take()

    def client_flushed(self) -> None:
        """The server bytes of the last `SendToClient(from_server=True)` were written on."""
        self._down.unflushed = False

    def _server_data(self, data: bytes) -> None:
        down = self._down
        startup = b""
        if down.in_startup:
            startup = self._rewrite_startup(data)
            # The startup is the gateway's business, not an answer a budget counts (rule 4).
            data = down.startup.take_buffered() if not down.in_startup else b""
            if not down.in_startup:
                self.tracker.server_data(startup)
        finished: list[StatementFinished] = []
        if data:
            cut = None
            if self._budgets.metered and down.stopper is None:
                cut = self._budgets.stop_offset(data, self.tracker.partial)
            if cut is None:
                data = self._forward(data, finished)
            else:  # the budget ends inside this chunk: the rest is stopped
                head = self._forward(data[:cut], finished)
                self._stop_result()
                data = head + self._forward(data[cut:], finished)
        if startup or data:
            down.unflushed = True
            self._emit(SendToClient(startup + data, from_server=True))
        masked, self._masked = self._masked, ()
        for n, f in enumerate(finished, 1):
            self._emit(
                self._record(
                    "pg.result",
                    statement_seq=self._seqs.pop(f.index, None),
                    tags=list(f.tags),
                    rows=f.rows,
                    duration_ms=f.duration_ms,
                    sqlstate=f.sqlstate,
                    error=f.error,
                    skipped=f.skipped,
                    **({"masked": _counts(masked)} if masked and n == len(finished) else {}),
                )
            )
        if masked and not finished:  # the bytes finished no statement: counts of their own
            self._emit(self._masked_record(masked))

    def _rewrite_startup(self, data: bytes) -> bytes:
        """Until the first ReadyForQuery, pass server messages, the BackendKeyData with the
        server's pid and a secret of ours (`gateway.protocols.pgcancel`)."""
        down = self._down
        down.startup.feed(data)
        out: list[bytes] = []
        while (message := down.startup.next_message()) is not None:
            decoded = decode_backend(message)
            if isinstance(decoded, BackendKeyData):
                if self.cancel_key is not None:  # a second BackendKeyData: the old key goes
                    self._keys.revoke(*self.cancel_key)
                secret = self._keys.issue(decoded.pid)
                self.cancel_key = (decoded.pid, secret)
                out.append(backend_key_data(decoded.pid, secret))
                continue
            out.append(message.raw)
            if isinstance(decoded, ReadyForQuery):
                down.in_startup = False
                break
        return b"".join(out)

    def _forward(self, piece: bytes, finished: list[StatementFinished]) -> bytes:
        down = self._down
        ours = 0  # bytes of the gateway's own in `piece`: not the server's (rule 4)
        stopper = down.stopper
        if stopper is not None:
            before = stopper.injected
            piece = stopper.feed(piece)
            ours = stopper.injected - before
            if stopper.done:
                down.stopper = None
        rows_before = self.tracker.rows_total
        finished.extend(self.tracker.server_data(piece))
        if self._budgets.metered:
            self._count(self.tracker.rows_total - rows_before, len(piece) - ours)
            if self._budgets.waiving and self.tracker.idle:
                self._budgets.unwaive()  # the approved statement's answer is complete
        return piece

    def _count(self, rows: int, nbytes: int) -> None:
        """Count what the client got against its budgets."""
        crossed = self._budgets.count(rows, nbytes)
        if crossed is None:
            return
        # Usage reaches the store every BUDGET_FLUSH_INTERVAL and at once when a budget is
        # crossed; a store write per statement cost more CPU than relaying it.
        self._emit(WakeBudgetFlusher())
        self._emit(
            self._record(
                "budget.exceeded",
                connection=self.info.connection,
                budget=crossed.budget.name,
                limit=crossed.limit,
                rows=crossed.usage.rows,
                bytes=crossed.usage.bytes,
                policy_version=self._budgets.version,
            )
        )

    def _stop_result(self) -> None:
        """The running result must not reach the client beyond here: cut it off, and ask the
        server to stop producing it (a late cancel meets an idle server or a statement this
        session refuses anyway)."""
        meter = self._budgets.meter
        exceeded = meter.exhausted() if meter is not None else None
        reason = exceeded.message if exceeded else "exfiltration budget exhausted"
        self._emit(
            self._record(
                "budget.stopped",
                connection=self.info.connection,
                budget=exceeded.budget.name if exceeded else None,
                rows=exceeded.usage.rows if exceeded else None,
                bytes=exceeded.usage.bytes if exceeded else None,
                policy_version=self._budgets.version,
            )
        )
        self._emit(CancelServer())
        self._down.stopper = ResultStopper(
            error_response(BUDGET_SQLSTATE, reason, severity="ERROR"),
            partial=self.tracker.partial,
        )

    def _agent_closed(self) -> None:
        ended_by = self.tracker.ended_by
        if self.client_done:
            # The close answers the client's; the server's FATAL, if any, says why it ended.
            error = None if ended_by is None else f"the server ended the session: {ended_by}"
            self._end(Close("client", error, wait_client_side=True))
            return
        # The server closed first (pg_terminate_backend, a session timeout, a restart).
        # PostgreSQL has no half-open session: after its FATAL a client waits for
        # end-of-file, and would wait forever for a client direction nobody will read. So
        # the session ends here, unlike raw TCP, whose half-close the shared pumps keep. The
        # client reads the server's last bytes, then end-of-file, as from a server that
        # exits; what it still sends is dropped, after the end is recorded (so the record
        # says when the server ended it, not when a client that reads nothing was let go).
        error = (
            f"the server ended the session: {ended_by}"
            if ended_by is not None
            else "the server closed the connection"
        )
        self._end(Close("server", error, end_output=True, close_agent=True, drain_after=True))

    # ---- endings from outside ----------------------------------------------------------

    def connection_failed(
        self, reason: str, agent_end: str | None = None, shutdown: bool = False
    ) -> list[Action]:
        """The client's connection or the agent's stream failed under the driver;
        `agent_end`: why the agent's stream ended, when it did (e.g. a revoked credential);
        `shutdown`: it ended because this gateway is shutting down (rule 6)."""
        if shutdown and agent_end is not None:
            self._shut_down(agent_end)
        else:
            self._failed(reason, agent_end)
        return self._take()

    def _failed(self, reason: str, agent_end: str | None = None) -> None:
        to_client = b""
        if agent_end is not None:
            to_client = error_response(
                "08006", f"connection {self.info.connection!r}: session ended: {agent_end}"
            )
        self._end(Close("connection", f"connection failed: {reason}", to_client=to_client))

    def _shut_down(self, reason: str) -> None:
        """Rule 6: this gateway is shutting down."""
        message = (
            "terminating connection because the Wardgate gateway is shutting down; "
            "connect again to reach another gateway"
        )
        self._end(
            Close(
                "shutdown",
                reason,
                to_client=error_response("57P01", message),
                end_output=True,
                linger=True,
            )
        )

    def audit_failed(self, reason: str) -> list[Action]:
        """A statement could not be recorded: fail closed, it is not run."""
        error = f"statement not run: {reason}"
        self._end(
            Close(
                "audit",
                error,
                to_client=error_response("58030", error),
                end_output=True,
                linger=True,
            )
        )
        return self._take()

    def _end(self, close: Close) -> None:
        """The one place a session ends (rule 5): the first ending wins."""
        if self.ending is not None:
            return
        self.ending = close
        if self._client is not None and not self._resuming:
            self._client.close()  # its requests are moot
            self._client, self.client_request = None, None
        self._emit(close)

    # ---- helpers -----------------------------------------------------------------------

    def _emit(self, action: Action) -> None:
        self._out.append(action)

    def _take(self) -> list[Action]:
        out, self._out = self._out, []
        return out

    def _masked_record(self, counts: tuple[tuple[str, str, int], ...]) -> Record:
        return self._record("pg.masked", connection=self.info.connection, counts=_counts(counts))

    def _record(self, kind: str, **fields: Any) -> Record:
        return Record(kind, {"actor": self.info.user, "session_id": self.info.session_id, **fields})

    def _statement(self, st: StatementStarted) -> Record:
        # All statements of one message go into the same commit, in order.
        return self._record(
            "pg.statement",
            connection=self.info.connection,
            groups=list(self.info.groups),
            text=st.text,
            protocol=st.protocol,
            params=st.params,
            statement=st.statement,
            policy_version=self._budgets.version,
            **({"values": list(st.values)} if st.values is not None else {}),
        )

    def _refusal_record(self, refusal: Refusal, *, ended_session: bool = False) -> Record:
        return self._record(
            "pg.refused",
            connection=self.info.connection,
            text=refusal.text,
            reason=refusal.reason,
            rules=list(refusal.rules),
            policy_version=self._budgets.version,
            **({"budget": refusal.budget} if refusal.budget and not ended_session else {}),
            **({"ended_session": True} if ended_session else {}),
        )


def _gateway_shutdown(end: SessionReset) -> bool:
    """This gateway ended the stream because it is shutting down (not the agent's word)."""
    return end.code is ResetCode.GATEWAY_SHUTDOWN and not end.by_peer


def _counts(counts: tuple[tuple[str, str, int], ...]) -> list[dict[str, Any]]:
    return [{"column": c, "detector": d, "count": n} for c, d, n in counts]
