"""Playbooks for the statement tracker: client calls in, server bytes in, results out."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from gateway.protocols.pgtrack import PgTracker, StatementFinished, render_params
from shared.pgwire.backend import (
    BindComplete,
    CommandComplete,
    DataRow,
    EmptyQueryResponse,
    ErrorResponse,
    ParseComplete,
    PortalSuspended,
    ReadyForQuery,
    RowDescription,
)


def clock() -> float:
    return 0.0


def rows(n: int) -> bytes:
    return b"".join(DataRow((str(i).encode(), None)).encode() for i in range(n))


def z(status: str = "I") -> bytes:
    return ReadyForQuery(status).encode()  # type: ignore[arg-type]


def error(code: str) -> bytes:
    return ErrorResponse({"S": "ERROR", "C": code, "M": "boom"}).encode()


def test_each_statement_of_a_simple_query_is_recorded_with_its_own_outcome() -> None:
    t = PgTracker(clock)
    started = t.query("select 1; select $$a;b$$ ;  select 3")
    assert [(s.index, s.text, s.protocol) for s in started] == [
        (1, "select 1", "simple"),
        (2, "select $$a;b$$", "simple"),
        (3, "select 3", "simple"),
    ]
    server = (
        RowDescription(()).encode()
        + rows(3)
        + CommandComplete("SELECT 3").encode()
        + rows(2)
        + CommandComplete("SELECT 2").encode()
        + error("22012")
    )
    assert t.server_data(server) == []
    done = t.server_data(z())
    assert done == [
        StatementFinished(1, ("SELECT 3",), 3, 0.0),
        StatementFinished(2, ("SELECT 2",), 2, 0.0),
        StatementFinished(3, (), 0, 0.0, "22012", "boom"),
    ]


def test_statements_after_a_failed_one_never_ran() -> None:
    t = PgTracker(clock)
    t.query("select 1/0; select 2")
    done = t.server_data(error("22012") + z())
    assert [(d.index, d.sqlstate, d.skipped) for d in done] == [
        (1, "22012", False),
        (2, None, True),
    ]


def test_unsplittable_text_stays_one_statement() -> None:
    t = PgTracker(clock)
    (only,) = t.query("selec garbage; x")
    assert only.text == "selec garbage; x"
    (done,) = t.server_data(error("42601") + z())
    assert (done.sqlstate, done.tags, done.skipped) == ("42601", (), False)


def test_pipelined_executes_complete_in_order_and_skip_after_an_error() -> None:
    t = PgTracker(clock, record_params=True)
    t.parse("s1", "select $1::int")
    t.bind("", "s1", (b"7",))
    a = t.execute("")
    t.bind("", "s1", (None,))
    b = t.execute("")
    t.sync()
    t.parse("", "insert into t values ($1)")
    t.bind("", "", (b"\x00\x01",), (1,))
    c = t.execute("")
    t.sync()
    assert (a.text, a.values) == ("select $1::int", ("7",))
    assert b.values == (None,)
    assert c.values == ("\\x0001",)
    server = (
        ParseComplete().encode()
        + BindComplete().encode()
        + rows(1)
        + CommandComplete("SELECT 1").encode()
        + BindComplete().encode()
        + error("22P02")
        + z()
        + ParseComplete().encode()
        + BindComplete().encode()
        + CommandComplete("INSERT 0 1").encode()
        + z()
    )
    done = t.server_data(server)
    assert [(d.index, d.tags, d.rows, d.sqlstate) for d in done] == [
        (1, ("SELECT 1",), 1, None),
        (2, (), 0, "22P02"),
        (3, ("INSERT 0 1",), 0, None),
    ]


def test_execute_never_reached_because_bind_failed_is_skipped() -> None:
    t = PgTracker(clock)
    t.bind("", "", ())
    t.execute("")
    t.execute("")  # a second Execute in the same batch
    t.sync()
    done = t.server_data(error("08P01") + z())
    assert [(d.sqlstate, d.skipped) for d in done] == [("08P01", False), (None, True)]


def test_empty_query_and_portal_suspended_end_an_execute() -> None:
    t = PgTracker(clock)
    t.execute("")
    t.execute("")
    t.sync()
    done = t.server_data(EmptyQueryResponse().encode() + rows(2) + PortalSuspended().encode() + z())
    assert [(d.index, d.rows) for d in done] == [(1, 0), (2, 2)]


@given(st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=30))
def test_any_chunking_of_the_server_stream_gives_the_same_result(cuts: list[int]) -> None:
    stream = rows(5) + CommandComplete("SELECT 5").encode() + error("XX000") + z()
    expected = PgTracker(clock)
    expected.query("select 1; select 2")
    want = expected.server_data(stream)
    t = PgTracker(clock)
    t.query("select 1; select 2")
    got: list[StatementFinished] = []
    pos = 0
    for size in itertools.cycle(cuts):
        if pos >= len(stream):
            break
        got += t.server_data(stream[pos : pos + size])
        pos += size
    assert got == want
    assert want[0].rows == 5 and want[1].sqlstate == "XX000"


def test_render_params_formats() -> None:
    assert render_params((b"a", b"\xff", None), (0, 1, 0)) == ("a", "\\xff", None)
    assert render_params((b"\x01", b"\x02"), (1,)) == ("\\x01", "\\x02")


def test_idle_and_transaction_status_follow_the_server() -> None:
    t = PgTracker(clock)
    assert t.idle and t.tx_status == "I"
    t.query("begin")
    assert not t.idle
    stream = CommandComplete("BEGIN").encode() + z("T")
    t.server_data(stream[:3])
    assert not t.idle  # a message is only half through
    t.server_data(stream[3:])
    assert t.idle and t.tx_status == "T"


def fatal(code: str, message: str) -> bytes:
    return ErrorResponse({"S": "FATAL", "V": "FATAL", "C": code, "M": message}).encode()


def test_a_fatal_error_is_kept_as_why_the_server_ended_the_session() -> None:
    t = PgTracker(clock)
    t.query("select pg_terminate_backend(pg_backend_pid())")
    assert t.ended_by is None
    t.server_data(error("22012"))  # an ERROR ends a statement, not the session
    assert t.ended_by is None
    # The answer to the running statement, cut anywhere.
    bye = fatal("57P01", "terminating connection due to administrator command")
    t.server_data(bye[:7])
    t.server_data(bye[7:])
    assert t.ended_by is not None
    assert str(t.ended_by) == "57P01 terminating connection due to administrator command"


def test_a_fatal_error_nobody_asked_for_is_kept_too() -> None:
    t = PgTracker(clock)
    t.query("begin")
    t.server_data(CommandComplete("BEGIN").encode() + z("T"))
    assert t.idle
    # idle_in_transaction_session_timeout: the server speaks unasked, then closes.
    t.server_data(fatal("25P03", "terminating connection due to idle-in-transaction timeout"))
    assert t.ended_by is not None and t.ended_by.sqlstate == "25P03"
    # After a Sync, before its ReadyForQuery, answers belong to nobody; a FATAL still counts.
    t2 = PgTracker(clock)
    t2.sync()
    t2.server_data(fatal("57P01", "terminating connection due to administrator command"))
    assert t2.ended_by is not None and t2.ended_by.sqlstate == "57P01"
