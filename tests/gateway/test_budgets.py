"""Exfiltration budgets, the pure parts: the model, the meter, and the result stopper."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from pydantic import ValidationError

from gateway.policy.budgets import (
    BUDGET_SQLSTATE,
    Budget,
    BudgetMatch,
    BudgetMeter,
    ResultStopper,
    Usage,
    applicable,
    stop_offset,
)
from gateway.policy.rules import Match, PolicyConfig, Subject
from gateway.protocols.pgtrack import PgTracker
from shared.pgwire.backend import (
    CommandComplete,
    DataRow,
    ErrorResponse,
    NoticeResponse,
    ReadyForQuery,
    decode_backend,
    error_response,
)
from shared.pgwire.framing import MessageReader

DAY1 = dt.datetime(2026, 3, 1, 23, 59, 0, tzinfo=dt.UTC)
ALICE = Subject("alice", groups=("analysts",), roles=("reader",))
BOT = Subject("ci-bot", groups=("ci",), machine=True)


class Clock:
    def __init__(self, now: dt.datetime = DAY1) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


def budget(**kw: object) -> Budget:
    return Budget.model_validate({"name": "b", "rows_per_day": 10, **kw})


# ---- the model --------------------------------------------------------------------------


def test_a_budget_needs_a_limit_and_names_are_unique() -> None:
    with pytest.raises(ValidationError, match="rows_per_day and/or bytes_per_day"):
        Budget(name="none")
    with pytest.raises(ValidationError):
        Budget(name="neg", rows_per_day=0)
    with pytest.raises(ValidationError, match="`review:` block goes with `on_exceed: review`"):
        Budget.model_validate({"name": "r", "rows_per_day": 1, "on_exceed": "review"})
    with pytest.raises(ValidationError, match="`review:` block"):
        Budget.model_validate(
            {"name": "r", "rows_per_day": 1, "review": {"approvers": {"users": ["bob"]}}}
        )
    asks = Budget.model_validate(
        {
            "name": "r",
            "rows_per_day": 1,
            "on_exceed": "review",
            "review": {"approvers": {"groups": ["dba"]}},
        }
    )
    assert asks.review is not None and asks.review.approvers.groups == ("dba",)
    with pytest.raises(ValidationError, match="budget names must be unique"):
        PolicyConfig.model_validate({"budgets": [{"name": "x", "rows_per_day": 1}] * 2})
    with pytest.raises(ValidationError):  # statement conditions have no meaning here
        BudgetMatch.model_validate({"kinds": ["read"]})


MATCHES = [
    {},
    {"users": ["al*"]},
    {"users": ["bob"]},
    {"groups": ["analysts", "x"]},
    {"groups": ["ci"]},
    {"roles": ["reader"]},
    {"identity": "machine"},
    {"identity": "person"},
    {"connections": ["pg-*"]},
    {"connections": ["other"]},
    {"users": ["alice"], "connections": ["pg-main"], "identity": "person"},
]


@pytest.mark.parametrize("match", MATCHES)
@pytest.mark.parametrize("subject", [ALICE, BOT])
@pytest.mark.parametrize("connection", ["pg-main", "other"])
def test_budget_match_has_the_semantics_of_a_rule_match(
    match: dict[str, object], subject: Subject, connection: str
) -> None:
    expected = Match.model_validate(match).applies(subject, connection)
    assert BudgetMatch.model_validate(match).applies(subject, connection) is expected


def test_applicable_budgets() -> None:
    budgets = [
        budget(name="all"),
        budget(name="bots", match={"identity": "machine"}),
        budget(name="main", match={"connections": ["pg-main"]}),
    ]
    assert [b.name for b in applicable(budgets, ALICE, "pg-main")] == ["all", "main"]
    assert [b.name for b in applicable(budgets, BOT, "other")] == ["all", "bots"]


# ---- the meter --------------------------------------------------------------------------


def test_the_meter_reports_a_crossing_once_and_stays_exhausted() -> None:
    meter = BudgetMeter(
        [budget(rows_per_day=10), Budget(name="bytes", bytes_per_day=1000)], Clock()
    )
    assert meter.exhausted() is None
    assert meter.add(9, 100) is None
    crossed = meter.add(1, 100)
    assert crossed is not None and crossed.budget.name == "b" and crossed.limit == "rows"
    assert crossed.usage == Usage(10, 200)
    assert "'b' exhausted: 10 rows" in crossed.message and "limit 10 rows" in crossed.message
    assert meter.add(5, 100) is None  # already announced
    exhausted = meter.exhausted()
    assert exhausted is not None and exhausted.budget.name == "b"
    crossed = meter.add(0, 700)
    assert crossed is not None and crossed.budget.name == "bytes" and crossed.limit == "bytes"


def test_the_meter_adds_what_others_used_and_flushes_its_own() -> None:
    clock = Clock()
    meter = BudgetMeter([budget(rows_per_day=100)], clock)
    meter.load({"b": Usage(95, 0)}, meter.day)  # other sessions, other replicas
    assert meter.add(4, 0) is None
    pending = meter.take_pending()
    assert pending == {(DAY1.date(), "b"): Usage(4, 0)}
    assert not meter.pending and meter.used("b") == Usage(99, 0)
    meter.restore(pending)  # the store write failed: counted again at the next flush
    assert meter.pending and meter.used("b") == Usage(99, 0)
    assert meter.add(1, 0) is not None


def test_a_new_utc_day_starts_from_nothing_and_keeps_yesterdays_pending() -> None:
    clock = Clock()
    meter = BudgetMeter([budget(rows_per_day=10)], clock)
    meter.add(10, 0)
    assert meter.exhausted() is not None
    clock.now += dt.timedelta(minutes=2)  # 00:01 the next day
    assert meter.exhausted() is None
    meter.load({"b": Usage(3, 0)}, DAY1.date())  # a late answer for yesterday is ignored
    assert meter.used("b") == Usage()
    assert meter.add(2, 0) is None
    assert meter.take_pending() == {
        (DAY1.date(), "b"): Usage(10, 0),
        (DAY1.date() + dt.timedelta(days=1), "b"): Usage(2, 0),
    }


def test_a_stopping_budget_wins_over_one_that_asks_and_an_approval_waives_only_its_budgets() -> (
    None
):
    review = {"approvers": {"groups": ["dba"]}}
    asks = Budget.model_validate(
        {"name": "asks", "rows_per_day": 10, "on_exceed": "review", "review": review}
    )
    stops = Budget(name="stops", rows_per_day=20)
    meter = BudgetMeter([asks, stops], Clock())
    meter.add(10, 0)
    exhausted = meter.exhausted()
    assert exhausted is not None and exhausted.budget.name == "asks"
    assert meter.asking() == ("asks",)
    assert meter.remaining() == (0, None)
    meter.waive(meter.asking())  # an approved statement: cut only by the budget that stops
    assert meter.remaining() == (10, None)
    meter.unwaive()
    assert meter.remaining() == (0, None)
    meter.add(10, 0)
    exhausted = meter.exhausted()
    assert exhausted is not None and exhausted.budget.name == "stops"  # refusing wins


# ---- the stopper ------------------------------------------------------------------------

STOP = error_response(BUDGET_SQLSTATE, "budget 'b' exhausted", severity="ERROR")


def rows(n: int, width: int = 20) -> bytes:
    return b"".join(DataRow((b"x" * width, str(i).encode())).encode() for i in range(n))


def messages(data: bytes) -> list[object]:
    reader = MessageReader()
    reader.feed(data)
    out: list[object] = []
    while (m := reader.next_message()) is not None:
        out.append(decode_backend(m))
    return out


def test_the_stopper_drops_rows_replaces_the_completion_and_passes_ready_for_query() -> None:
    notice = NoticeResponse({"S": "NOTICE", "C": "00000", "M": "hi"}).encode()
    server = (
        rows(3)
        + notice
        + rows(2)
        + CommandComplete("SELECT 5").encode()
        + ReadyForQuery("I").encode()
        + rows(1)
    )
    stopper = ResultStopper(STOP)
    out = stopper.feed(server)
    assert stopper.done and stopper.dropped_rows == 5
    got = messages(out)
    assert isinstance(got[0], NoticeResponse)
    assert isinstance(got[1], ErrorResponse) and got[1].fields["C"] == BUDGET_SQLSTATE
    assert isinstance(got[2], ReadyForQuery)
    assert isinstance(got[3], DataRow)  # after ReadyForQuery everything passes
    assert len(got) == 4


def test_the_server_error_after_a_cancel_becomes_the_budget_error() -> None:
    cancelled = ErrorResponse({"S": "ERROR", "C": "57014", "M": "canceling statement"}).encode()
    out = ResultStopper(STOP).feed(rows(4) + cancelled + ReadyForQuery("E").encode())
    got = messages(out)
    assert [type(m).__name__ for m in got] == ["ErrorResponse", "ReadyForQuery"]
    assert isinstance(got[0], ErrorResponse) and got[0].fields["C"] == BUDGET_SQLSTATE


@given(st.data())
def test_the_stopper_is_the_same_whatever_the_chunking(data: st.DataObject) -> None:
    """Started at any byte of a stream the tracker scanned, the client gets whole messages."""
    head = rows(3, width=50)
    tail = rows(4, width=70) + CommandComplete("SELECT 7").encode() + ReadyForQuery("I").encode()
    stream = head + tail
    split = data.draw(st.integers(0, len(stream) - 1), label="stop at")
    tracker = PgTracker(lambda: 0.0)
    tracker.query("select")
    tracker.server_data(stream[:split])
    stopper = ResultStopper(STOP, partial=tracker.partial)
    rest = stream[split:]
    cuts = sorted(data.draw(st.lists(st.integers(0, len(rest)), max_size=6), label="cuts"))
    out = stream[:split]
    previous = 0
    for cut in [*cuts, len(rest)]:
        out += stopper.feed(rest[previous:cut])
        previous = cut
    got = messages(out)  # would raise on a torn message
    assert isinstance(got[-1], ReadyForQuery) and stopper.done
    completion_at = len(stream) - len(CommandComplete("SELECT 7").encode()) - 6
    if split > completion_at:  # the completion had begun to reach the client: it finishes
        assert isinstance(got[-2], CommandComplete)
    else:
        assert isinstance(got[-2], ErrorResponse) and got[-2].fields["C"] == BUDGET_SQLSTATE
    assert all(isinstance(m, DataRow) for m in got[:-2])
    assert len(got) - 2 <= 7


def test_remaining_is_the_tightest_budget() -> None:
    meter = BudgetMeter(
        [budget(rows_per_day=10), Budget(name="x", rows_per_day=8, bytes_per_day=100)], Clock()
    )
    meter.add(3, 40)
    assert meter.remaining() == (5, 60)
    assert BudgetMeter([Budget(name="y", bytes_per_day=9)], Clock()).remaining() == (None, 9)


def test_stop_offset_cuts_before_the_first_row_past_the_limit() -> None:
    one = DataRow((b"abc",)).encode()
    done = CommandComplete("SELECT 5").encode() + ReadyForQuery("I").encode()
    chunk = one * 5 + done
    assert stop_offset(chunk, (b"", 0), 5, None) is None  # ends exactly at the limit
    assert stop_offset(chunk, (b"", 0), 3, None) == 3 * len(one)
    assert stop_offset(chunk, (b"", 0), 0, None) == 0
    # The row that reaches the bytes limit passes, the next is cut.
    assert stop_offset(chunk, (b"", 0), None, 2 * len(one) + 1) == 3 * len(one)
    assert stop_offset(chunk, (b"", 0), None, 2 * len(one)) == 2 * len(one)
    assert stop_offset(chunk, (b"", 0), None, len(chunk)) is None
    # Inside a row already on its way (the tracker counted it): it goes through.
    rest = len(one) - 4
    assert stop_offset(one[4:] + one * 2, (b"", rest), 1, None) == rest + len(one)
    assert stop_offset(one[4:] + one * 2, (b"", rest), 0, None) == rest
    # A header split over two chunks: the carried row counts but cannot be cut.
    assert stop_offset(one[2:] + one, (one[:2], 0), 0, None) == len(one) - 2
    # A row past the limit whose header the chunk cuts short: cut before its first byte.
    assert stop_offset(one * 2 + one[:3], (b"", 0), 2, None) == 2 * len(one)
    assert stop_offset(one[:1], (b"", 0), 0, None) == 0
    # Non-row messages are never cut.
    assert stop_offset(done * 10, (b"", 0), 0, 1) is None


@given(st.integers(0, 30), st.integers(1, 40), st.integers(0, 60))
@example(left=5, total=6, at=18)  # the chunk ends inside the header of the row past the limit
def test_a_stopped_stream_gives_exactly_the_rows_left(left: int, total: int, at: int) -> None:
    """Tracker, stop_offset and stopper together, chunked anywhere: rows = min(total, left)."""
    stream = rows(total, width=30) + CommandComplete(f"SELECT {total}").encode() + b"Z\0\0\0\x05I"
    tracker = PgTracker(lambda: 0.0)
    tracker.query("select")
    cut_at = min(at * 13, len(stream))
    out = b""
    stopper: ResultStopper | None = None
    for chunk in (stream[:cut_at], stream[cut_at:]):
        if stopper is None:
            offset = stop_offset(chunk, tracker.partial, left - tracker.rows_total, None)
            if offset is not None:
                out += chunk[:offset]
                tracker.server_data(chunk[:offset])
                stopper = ResultStopper(STOP, partial=tracker.partial)
                chunk = chunk[offset:]
        piece = stopper.feed(chunk) if stopper is not None else chunk
        tracker.server_data(piece)
        out += piece
    got = messages(out)
    assert sum(isinstance(m, DataRow) for m in got) == min(total, left)
    assert isinstance(got[-1], ReadyForQuery)
    if total > left:
        assert isinstance(got[-2], ErrorResponse) and got[-2].fields["C"] == BUDGET_SQLSTATE
    else:
        assert isinstance(got[-2], CommandComplete)
