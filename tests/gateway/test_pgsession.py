"""The PostgreSQL session as a state machine: playbooks of events in and actions out, no sockets.

Every way a session ends, and the order of what the client gets around refusals, reviews
and budgets, driven through `PgSession` the way the asyncio driver drives it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence

import pytest

from gateway.policy.approval import ReviewTerms
from gateway.policy.budgets import BUDGET_SQLSTATE, Budget, BudgetMeter, Exceeded, stop_offset
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
from gateway.protocols.pgcancel import CancelKeys, SessionKeys
from gateway.protocols.pgsession import LINGER, PgSession
from shared.pgwire.backend import (
    BackendMessage,
    CommandComplete,
    DataRow,
    ErrorResponse,
    NoticeResponse,
    ReadyForQuery,
    backend_key_data,
    decode_backend,
    error_response,
    parameter_status,
    ready_for_query,
)
from shared.pgwire.framing import MessageReader
from shared.pgwire.frontend import Bind, Execute, Parse, Query, Sync, Terminate
from shared.tunnel.frames import ResetCode
from shared.tunnel.session import DataReceived, MaskReported, RemoteClosed, SessionReset

SERVER_STARTUP = (
    parameter_status("server_version", "15.18")
    + backend_key_data(4242, b"srv!")
    + ready_for_query("I")
)
ROWS_T = b"T\x00\x00\x00\x06\x00\x00"  # RowDescription with no columns: enough for the tracker
SELECT_1 = Query("select 1").encode()
ANSWER_1 = ROWS_T + DataRow((b"1",)).encode() + CommandComplete("SELECT 1").encode()
IDLE = ready_for_query("I")
FATAL = error_response("57P01", "terminating connection due to administrator command")
TERMS = ReviewTerms.model_validate({"approvers": {"groups": ["dba"]}})


def keys() -> SessionKeys[str]:
    """The gateway's cancel keys, as session s-1 hands them out (protocol 3.2 length)."""
    return SessionKeys(CancelKeys[str](), "s-1", 32)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class NoBudgets:
    version = 7
    metered = False
    waiving = False
    meter: BudgetMeter | None = None

    def count(self, rows: int, nbytes: int) -> Exceeded | None:
        raise AssertionError("nothing is counted without budgets")

    def stop_offset(self, data: bytes, partial: tuple[bytes, int]) -> int | None:
        return None

    def waive(self, budgets: tuple[str, ...]) -> None:
        pass

    def unwaive(self) -> None:
        pass


class Budgets:
    """A session's budgets over the real meter (what `SessionPolicy` does without the store)."""

    version = 7
    metered = True

    def __init__(self, *budgets: Budget) -> None:
        self.meter = BudgetMeter(budgets, lambda: dt.datetime(2026, 3, 1, tzinfo=dt.UTC))

    @property
    def waiving(self) -> bool:
        return bool(self.meter.waived)

    def count(self, rows: int, nbytes: int) -> Exceeded | None:
        return self.meter.add(rows, nbytes)

    def stop_offset(self, data: bytes, partial: tuple[bytes, int]) -> int | None:
        return stop_offset(data, partial, *self.meter.remaining())

    def waive(self, budgets: tuple[str, ...]) -> None:
        self.meter.waive(budgets)

    def unwaive(self) -> None:
        self.meter.unwaive()


def new_session(
    budgets: NoBudgets | Budgets | None = None, *, reviews: bool = True
) -> tuple[PgSession, SessionKeys[str], Clock]:
    issuer, clock = keys(), Clock()
    info = SessionInfo("s-1", "alice", ("data",), "pg-main", reviews=reviews)
    return PgSession(info, budgets or NoBudgets(), issuer, clock), issuer, clock


def opened(budgets: NoBudgets | Budgets | None = None, *, reviews: bool = True) -> PgSession:
    """A session past startup: the client has its ReadyForQuery."""
    pg, _, _ = new_session(budgets, reviews=reviews)
    pg.start()
    agent(pg, SERVER_STARTUP)
    return pg


def agent(pg: PgSession, data: bytes) -> list[Action]:
    """Server bytes, written on to the client at once (as the driver does)."""
    actions = pg.agent_event(DataReceived(data))
    pg.client_flushed()
    return actions


def client(
    pg: PgSession, data: bytes, verdict: Callable[[Judge], Verdict] = lambda _: None
) -> list[Action]:
    """Client bytes, with the verdicts and audit seqs the driver would answer, up to the
    next request that is neither."""
    actions = pg.client_data(data)
    return settle(pg, actions, verdict)


def settle(
    pg: PgSession, actions: list[Action], verdict: Callable[[Judge], Verdict] = lambda _: None
) -> list[Action]:
    seq = 100
    while True:
        request = pg.client_request
        if isinstance(request, Judge):
            actions += pg.judged(verdict(request))
        elif isinstance(request, RecordDurably):
            actions += pg.recorded(tuple(range(seq, seq + len(request.records))))
            seq += len(request.records)
        else:
            return actions


def to_client(actions: Sequence[Action]) -> list[BackendMessage]:
    reader = MessageReader()
    for action in actions:
        if isinstance(action, SendToClient):
            reader.feed(action.data)
    out = []
    while (message := reader.next_message()) is not None:
        out.append(decode_backend(message))
    return out


def to_agent(actions: Sequence[Action]) -> bytes:
    return b"".join(a.data for a in actions if isinstance(a, SendToAgent))


def records(actions: Sequence[Action], kind: str) -> list[Record]:
    return [a for a in actions if isinstance(a, Record) and a.kind == kind]


def closed(actions: Sequence[Action]) -> Close:
    ends = [a for a in actions if isinstance(a, Close)]
    assert len(ends) == 1, actions
    return ends[0]


def asked(pg: PgSession) -> Request | None:
    """What the client side waits for now (read afresh: every answer changes it)."""
    return pg.client_request


def refuse(text: str, sqlstate: str = "42501") -> Callable[[Judge], Verdict]:
    def judge(asked: Judge) -> Verdict:
        sql = str(getattr(asked.decoded, "text", None) or getattr(asked.decoded, "query", ""))
        return Refusal(f"policy: no {text}", sql, ("r",), sqlstate) if text in sql else None

    return judge


def hold(text: str, budgets: tuple[str, ...] = ()) -> Callable[[Judge], Verdict]:
    def judge(asked: Judge) -> Verdict:
        sql = str(getattr(asked.decoded, "text", None) or getattr(asked.decoded, "query", ""))
        return (
            Hold("needs a second pair of eyes", sql, ("r",), TERMS, budgets)
            if text in sql
            else None
        )

    return judge


# ---- startup -----------------------------------------------------------------------------


def test_a_second_backend_key_replaces_the_first() -> None:
    pg, issuer, _ = new_session()
    agent(pg, backend_key_data(1, b"a!a!") + backend_key_data(2, b"b!b!") + IDLE)
    assert pg.cancel_key is not None and pg.cancel_key[0] == 2
    assert len(issuer.keys) == 1 and issuer.keys.find(*pg.cancel_key) == "s-1"


# ---- statements ----------------------------------------------------------------------------


def test_a_statement_is_recorded_before_it_is_forwarded_and_its_result_after() -> None:
    pg = opened()
    actions = pg.client_data(SELECT_1)
    assert pg.client_request == Judge(b"Q", Query("select 1"), True)
    actions += pg.judged(None)
    assert isinstance(pg.client_request, RecordDurably) and not to_agent(actions)
    (statement,) = pg.client_request.records
    assert statement.kind == "pg.statement" and statement.fields["text"] == "select 1"
    assert statement.fields["policy_version"] == 7 and statement.fields["actor"] == "alice"
    actions += pg.recorded((41,))
    assert to_agent(actions) == SELECT_1 and pg.client_request == NeedClientData()
    done = agent(pg, ANSWER_1 + IDLE)
    (result,) = records(done, "pg.result")
    assert result.fields["statement_seq"] == 41 and result.fields["rows"] == 1


def test_masking_counts_from_the_agent_are_recorded() -> None:
    pg = opened()
    (masked,) = records(pg.agent_event(MaskReported((("email", "email", 3),))), "pg.masked")
    assert masked.fields["counts"] == [{"column": "email", "detector": "email", "count": 3}]


def test_counts_that_ride_in_data_go_into_the_last_statement_those_bytes_finish() -> None:
    counts = (("t.email", "column", 2),)
    expected = [{"column": "t.email", "detector": "column", "count": 2}]
    pg = opened()
    client(pg, Query("select 1; select 1").encode())
    assert pg.agent_event(MaskReported(counts, with_data=True)) == []
    first, second = records(agent(pg, ANSWER_1 + ANSWER_1 + IDLE), "pg.result")
    assert "masked" not in first.fields and second.fields["masked"] == expected
    # Bytes that finish no statement (a result ends at ReadyForQuery): counts of their own.
    client(pg, SELECT_1)
    pg.agent_event(MaskReported(counts, with_data=True))
    done = agent(pg, ANSWER_1)
    assert not records(done, "pg.result")
    (masked,) = records(done, "pg.masked")
    assert masked.fields["counts"] == expected


# ---- every ending ---------------------------------------------------------------------------


def test_server_fatal_then_end_of_file_reaches_the_client_and_ends_the_session() -> None:
    pg = opened()
    client(pg, Query("select pg_sleep(60)").encode())
    got = agent(pg, FATAL)
    assert [type(m) for m in to_client(got)] == [ErrorResponse]
    end = closed(pg.agent_event(RemoteClosed()))
    assert end.cause == "server"
    assert end.error == (
        "the server ended the session: 57P01 terminating connection due to administrator command"
    )
    # The client reads the FATAL, then end-of-file; both directions to the agent are closed,
    # and what the client still sends is dropped only after the end is recorded.
    assert end.end_output and end.close_agent and end.drain_after and not end.to_client
    assert not pg.reading_client and not pg.reading_agent and pg.client_request is None


def test_a_server_gone_without_a_word_is_recorded_as_closed_by_the_server() -> None:
    pg = opened()
    end = closed(pg.agent_event(RemoteClosed()))
    assert (end.cause, end.error) == ("server", "the server closed the connection")


def test_client_terminate_ends_cleanly_once_the_agent_closes() -> None:
    pg = opened()
    actions = client(pg, Terminate().encode())
    assert to_agent(actions) == Terminate().encode() and isinstance(actions[-1], CloseToAgent)
    assert pg.client_request is None and pg.ending is None  # the server's close answers it
    end = closed(pg.agent_event(RemoteClosed()))
    assert (end.cause, end.error, end.wait_client_side) == ("client", None, True)
    assert not end.end_output and not end.close_agent


def test_client_end_of_file_half_closes_and_the_servers_fatal_is_the_reason() -> None:
    pg = opened()
    assert client(pg, b"") == [CloseToAgent()]
    agent(pg, FATAL)
    end = closed(pg.agent_event(RemoteClosed()))
    assert end.cause == "client" and end.error is not None and "57P01" in end.error


def test_agent_gone_mid_statement_tells_the_client_and_ends() -> None:
    pg = opened()
    client(pg, Query("select pg_sleep(60)").encode())
    end = closed(pg.agent_event(SessionReset(ResetCode.INTERNAL, "agent lost its target")))
    assert (end.cause, end.error) == ("agent", "agent lost its target")
    (error,) = to_client([SendToClient(end.to_client)])
    assert isinstance(error, ErrorResponse) and error.fields["C"] == "08006"
    assert error.fields["M"] == "connection 'pg-main': session ended: agent lost its target"
    assert pg.client_request is None


def test_a_gateway_shutting_down_ends_with_57P01_and_a_lingering_close() -> None:
    pg = opened()
    reset = SessionReset(ResetCode.GATEWAY_SHUTDOWN, "gateway shutting down", by_peer=False)
    end = closed(pg.agent_event(reset))
    assert (end.cause, end.error) == ("shutdown", "gateway shutting down")
    assert end.end_output and end.linger  # the client reads the error, then end-of-file
    (error,) = to_client([SendToClient(end.to_client)])
    assert isinstance(error, ErrorResponse) and error.fields["C"] == "57P01"
    assert error.fields["S"] == "FATAL"
    assert "the Wardgate gateway is shutting down" in error.fields["M"]


def test_an_agent_saying_its_gateway_shuts_down_is_not_taken_for_ours() -> None:
    pg = opened()
    reset = SessionReset(ResetCode.GATEWAY_SHUTDOWN, "not yours to say")  # by the peer
    end = closed(pg.agent_event(reset))
    (error,) = to_client([SendToClient(end.to_client)])
    assert isinstance(error, ErrorResponse) and error.fields["C"] == "08006"


def test_a_send_failing_under_a_shutdown_still_says_57P01() -> None:
    pg = opened()
    end = closed(pg.connection_failed("session closed", "gateway shutting down", shutdown=True))
    assert end.error == "gateway shutting down"
    (error,) = to_client([SendToClient(end.to_client)])
    assert isinstance(error, ErrorResponse) and error.fields["C"] == "57P01"


def test_a_client_protocol_violation_ends_with_08P01_and_a_lingering_close() -> None:
    pg = opened()
    end = closed(pg.client_data(b"Q\x00\x00\x00\x02"))  # a length shorter than itself
    assert end.cause == "protocol" and end.end_output and end.linger
    (error,) = to_client([SendToClient(end.to_client)])
    assert isinstance(error, ErrorResponse) and error.fields["C"] == "08P01"


def test_a_statement_that_cannot_be_recorded_is_not_run() -> None:
    pg = opened()
    actions = pg.client_data(SELECT_1) + pg.judged(None)
    assert isinstance(pg.client_request, RecordDurably)
    end = closed(pg.audit_failed("store down"))
    assert (end.cause, end.error) == ("audit", "statement not run: store down")
    assert not to_agent(actions) and end.linger


def test_a_lost_connection_names_why_the_agents_stream_ended() -> None:
    pg = opened()
    end = closed(pg.connection_failed("Connection reset by peer", "credential revoked"))
    assert (end.cause, end.error) == ("connection", "connection failed: Connection reset by peer")
    (error,) = to_client([SendToClient(end.to_client)])
    assert isinstance(error, ErrorResponse)
    assert error.fields["M"] == "connection 'pg-main': session ended: credential revoked"


def test_the_first_ending_wins_and_nothing_follows_it() -> None:
    pg = opened()
    closed(pg.agent_event(RemoteClosed()))
    assert pg.agent_event(DataReceived(IDLE)) == []
    assert pg.connection_failed("late") == [] and pg.audit_failed("late") == []
    assert pg.ending is not None and pg.ending.cause == "server"


# ---- refusals, in order ---------------------------------------------------------------------


def test_a_refused_statement_is_answered_after_the_answers_before_it() -> None:
    pg = opened()
    drop = Query("drop table t").encode()
    actions = client(pg, SELECT_1 + drop, refuse("drop"))
    assert to_agent(actions) == SELECT_1  # the refused statement never reaches the server
    assert pg.client_request == NeedServerIdle() and not to_client(actions)
    server = agent(pg, ANSWER_1 + IDLE)
    assert pg.server_idle
    actions = settle(pg, pg.resume())
    assert records(actions, "pg.refused") == []  # recorded durably, through RecordDurably
    got = to_client(server + actions)
    assert [type(m) for m in got] == [
        type(m) for m in to_client([SendToClient(ANSWER_1 + IDLE)])
    ] + [ErrorResponse, ReadyForQuery]
    assert isinstance(got[-2], ErrorResponse) and got[-2].fields["M"] == "policy: no drop"
    assert asked(pg) == NeedClientData() and pg.ending is None  # the session goes on


def test_a_refused_parse_is_answered_at_the_clients_sync() -> None:
    pg = opened()
    batch = Parse("", "drop table t").encode() + Bind("", "").encode() + Execute().encode()
    actions = client(pg, batch, refuse("drop"))
    assert [type(m) for m in to_client(actions)] == [ErrorResponse]
    actions = client(pg, Sync().encode(), refuse("drop"))
    assert to_client(actions) == [ReadyForQuery("I")] and not to_agent(actions)


def test_a_refusal_mid_batch_ends_the_session_after_the_clients_sync() -> None:
    pg = opened()
    batch = (
        Parse("", "select 1").encode()
        + Bind("", "").encode()
        + Execute().encode()
        + Parse("", "drop table t").encode()
    )
    actions = client(pg, batch, refuse("drop"))
    assert isinstance(pg.client_request, NeedClientData) and pg.client_request.until == (
        1000.0 + LINGER
    )
    assert records(actions, "pg.refused") == []
    end = closed(pg.client_data(Bind("", "").encode() + Execute().encode() + Sync().encode()))
    assert end.cause == "refused" and end.reset_agent_first == "policy: no drop"
    assert [type(m) for m in to_client([SendToClient(end.to_client)])] == [
        ErrorResponse,
        ReadyForQuery,
        ErrorResponse,
    ]
    assert end.end_output and end.linger


def test_a_refusal_mid_batch_without_a_sync_in_time_sends_only_the_fatal() -> None:
    pg = opened()
    client(pg, Parse("", "select 1").encode() + Parse("", "drop").encode(), refuse("drop"))
    end = closed(pg.timer_expired())
    (fatal,) = to_client([SendToClient(end.to_client)])
    assert isinstance(fatal, ErrorResponse) and fatal.fields["S"] == "FATAL"


# ---- held statements ----------------------------------------------------------------------


def held(pg: PgSession, text: str = "delete from t") -> list[Action]:
    actions = client(pg, Query(text).encode(), hold("delete"))
    assert pg.client_request == OpenReview(Hold("needs a second pair of eyes", text, ("r",), TERMS))
    assert not pg.reading_client  # nothing the client sends after it is read meanwhile
    actions += pg.review_opened("rv-9")
    assert asked(pg) == AwaitReview("rv-9")
    (notice,) = to_client(actions)
    assert isinstance(notice, NoticeResponse)
    assert notice.fields["H"] == "another person approves with: wardgate reviews approve rv-9"
    return actions


def test_a_held_statement_approved_runs_as_if_it_had_just_arrived() -> None:
    pg = opened()
    held(pg)
    actions = settle(pg, pg.review_decided(ReviewDecided("approved", "ok")))
    assert to_agent(actions) == Query("delete from t").encode()


def test_a_held_statement_denied_is_refused_and_the_session_goes_on() -> None:
    pg = opened()
    held(pg)
    actions = settle(pg, pg.review_decided(ReviewDecided("denied", "not today")))
    error, ready = to_client(actions)
    assert isinstance(error, ErrorResponse) and error.fields["C"] == "42501"
    assert error.fields["M"] == "policy: review rv-9 was denied (not today); statement not run"
    assert ready == ReadyForQuery("I") and not to_agent(actions) and pg.ending is None


def test_a_held_statement_withdrawn_by_the_client_gets_57014() -> None:
    pg = opened()
    held(pg)
    pg.review_decided(ReviewDecided(None))
    assert pg.client_request == CancelReview("rv-9", "cancelled by the client")
    actions = settle(pg, pg.resume())
    error, _ = to_client(actions)
    assert isinstance(error, ErrorResponse) and error.fields["C"] == "57014"


@pytest.mark.parametrize("status", [None, "approved"])
def test_a_client_gone_while_held_runs_nothing_and_ends(status: str | None) -> None:
    pg = opened()
    held(pg)
    actions = pg.review_decided(ReviewDecided(status, client_gone=True))
    if status is None:  # nobody waits for the review any more: withdrawn
        assert pg.client_request == CancelReview("rv-9", "the client went away")
        actions += pg.resume()
    end = closed(actions)
    assert end.error == "connection failed: the client went away while its statement was held"
    assert not to_agent(actions)


def test_a_hold_waits_for_the_server_to_be_idle_before_its_notice() -> None:
    pg = opened()
    client(pg, SELECT_1 + Query("delete from t").encode(), hold("delete"))
    assert pg.client_request == NeedServerIdle()
    agent(pg, ANSWER_1 + IDLE)
    pg.resume()
    assert isinstance(pg.client_request, OpenReview)


def test_a_hold_without_reviews_or_a_stored_review_is_refused() -> None:
    pg = opened(reviews=False)
    error, _ = to_client(client(pg, Query("delete from t").encode(), hold("delete")))
    assert isinstance(error, ErrorResponse) and "approvals are not enabled" in error.fields["M"]
    pg = opened()
    client(pg, Query("delete from t").encode(), hold("delete"))
    error, _ = to_client(settle(pg, pg.review_opened(None)))
    assert isinstance(error, ErrorResponse) and "could not be created" in error.fields["M"]


def test_an_approved_parse_is_not_asked_again_until_its_approval_expires() -> None:
    pg, _, clock = new_session()
    agent(pg, SERVER_STARTUP)
    parse = Parse("", "delete from t").encode()
    client(pg, parse, hold("delete"))
    pg.review_opened("rv-1")
    assert to_agent(settle(pg, pg.review_decided(ReviewDecided("approved", "ok")))) == parse
    again = client(pg, Sync().encode() + parse, hold("delete"))
    assert to_agent(again) == Sync().encode() + parse and pg.client_request == NeedClientData()
    clock.now += TERMS.approval_ttl + 1
    late = client(pg, Sync().encode() + parse, hold("delete"))
    assert to_agent(late) == Sync().encode()  # asked again: held, after the server is idle
    assert isinstance(pg.client_request, NeedServerIdle | OpenReview)


# ---- flow control ---------------------------------------------------------------------------


def test_server_bytes_are_not_read_ahead_of_the_client() -> None:
    pg, _, _ = new_session()
    pg.start()
    assert pg.reading_agent
    actions = pg.agent_event(DataReceived(SERVER_STARTUP))
    (send,) = [a for a in actions if isinstance(a, SendToClient)]
    assert send.from_server and not pg.reading_agent  # the tunnel's credit stays out
    with pytest.raises(AssertionError, match="before the last were written"):
        pg.agent_event(DataReceived(ROWS_T))
    pg.client_flushed()
    assert pg.reading_agent


def test_client_bytes_are_not_read_while_a_statement_awaits_its_verdict() -> None:
    pg = opened()
    pg.client_data(SELECT_1)
    assert not pg.reading_client and isinstance(pg.client_request, Judge)
    settle(pg, [])
    assert pg.reading_client


# ---- budgets --------------------------------------------------------------------------------


def rows_answer(n: int) -> tuple[bytes, bytes, bytes]:
    row = DataRow((b"x" * 10,)).encode()
    return ROWS_T, row * n, CommandComplete(f"SELECT {n}").encode() + IDLE


def test_a_budget_crossed_stops_the_result_before_the_row_it_has_no_room_for() -> None:
    budgets = Budgets(Budget(name="daily", rows_per_day=2))
    pg = opened(budgets)
    client(pg, Query("select x from t").encode())
    head, rows, tail = rows_answer(5)
    actions = agent(pg, head + rows + tail)
    assert CancelServer() in actions and WakeBudgetFlusher() in actions
    (crossed,) = records(actions, "budget.exceeded")
    assert crossed.fields["budget"] == "daily" and crossed.fields["rows"] == 2
    assert len(records(actions, "budget.stopped")) == 1
    got = to_client(actions)
    assert [type(m) for m in got][1:] == [DataRow, DataRow, ErrorResponse, ReadyForQuery]
    assert isinstance(got[3], ErrorResponse) and got[3].fields["C"] == BUDGET_SQLSTATE
    assert budgets.meter.used("daily").rows == 2


def test_budgets_count_the_servers_bytes_not_the_gateways_stopping_error() -> None:
    budgets = Budgets(Budget(name="daily", rows_per_day=2))
    pg = opened(budgets)
    client(pg, Query("select x from t").encode())
    head, rows, tail = rows_answer(5)
    row = len(rows) // 5
    sent = b"".join(a.data for a in agent(pg, head + rows + tail) if isinstance(a, SendToClient))
    ours = len(sent) - len(head) - 2 * row - len(IDLE)  # the 53400 error in CommandComplete's place
    assert ours > 0
    assert budgets.meter.used("daily").bytes == len(head) + 2 * row + len(IDLE)


def test_a_refusal_on_an_exhausted_budget_counts_nothing() -> None:
    budgets = Budgets(Budget(name="daily", bytes_per_day=10))
    budgets.meter.add(0, 10)
    pg = opened(budgets)
    refused = Refusal("exfiltration budget 'daily' exhausted", "select 1", sqlstate=BUDGET_SQLSTATE)
    before = budgets.meter.used("daily")
    error, _ = to_client(client(pg, SELECT_1, lambda _: refused))
    assert isinstance(error, ErrorResponse) and error.fields["C"] == BUDGET_SQLSTATE
    assert budgets.meter.used("daily") == before


def test_an_approved_budget_review_lets_its_result_past_until_the_server_is_idle() -> None:
    budgets = Budgets(Budget(name="daily", rows_per_day=1))
    pg = opened(budgets)
    budgets.meter.add(1, 0)
    client(pg, Query("select x from t").encode(), hold("select", budgets=("daily",)))
    pg.review_opened("rv-2")
    settle(pg, pg.review_decided(ReviewDecided("approved", "ok")))
    assert budgets.waiving
    head, rows, tail = rows_answer(3)
    got = to_client(agent(pg, head + rows + tail))
    assert [type(m) for m in got].count(DataRow) == 3 and not budgets.waiving


def test_a_server_breaking_the_protocol_in_startup_ends_the_session_with_08P01() -> None:
    pg, _, _ = new_session()
    end = closed(pg.agent_event(DataReceived(b"K\x00\x00\x00\x05!")))  # a key of one byte
    assert end.cause == "agent" and end.error is not None
    assert end.error.startswith("server protocol violation")
    (error,) = to_client([SendToClient(end.to_client)])
    assert isinstance(error, ErrorResponse) and error.fields["C"] == "08P01"
