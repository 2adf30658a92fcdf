"""Masking by lineage without sockets: client messages followed, results tied to their
statements (simple and extended protocol, errors, PortalSuspended), masks applied to rows
and COPY fields, the notice sent once."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from pglast import parse_sql

from shared.lineage import MemoryCatalog, Relation, analyze
from shared.lineage.catalog import SessionCatalog
from shared.masking.catalog import FailClosedCatalog
from shared.masking.lineage import NOTHING, UNRESOLVED, ColumnMask, StatementMask, statement_mask
from shared.masking.planner import LineagePlanner, copy_format
from shared.masking.spec import MaskRule, MaskSpec, Strategy
from shared.masking.values import Masker
from shared.pgwire import copyrows
from shared.pgwire.backend import (
    CopyOutResponse,
    Field,
    command_complete,
    data_row,
    error_response,
    ready_for_query,
    row_description,
)
from shared.pgwire.follow import ClientFrames, ResultUnits
from shared.pgwire.framing import encode_message
from shared.pgwire.frontend import Bind, CopyData, Describe, Execute, Parse, Query, Sync
from shared.pgwire.masking import ResultMasker
from tests.shared.pgwire.test_masking import messages, rows_of

KEY = b"k" * 32
CARD = MaskRule("cards", Strategy.PARTIAL, columns=("accounts.card",))
SPEC = MaskSpec((CARD,), KEY)
CATALOG = MemoryCatalog().add(Relation("public", "accounts", ("id", "name", "card")))
DIRECT = StatementMask((ColumnMask(("accounts.card", "public.accounts.card")),))
DERIVED = StatementMask((ColumnMask(derived=True),))


def mask_of(sql: str) -> StatementMask:
    return statement_mask(analyze(sql, CATALOG)[0], SPEC)


# ---- lineage -> masks ------------------------------------------------------------------


def test_direct_derived_and_plain_columns() -> None:
    mask = mask_of(
        "select id, card as c, reverse(card), a, encode(card::bytea, 'hex') from accounts a"
    )
    assert mask.columns == (
        ColumnMask(),
        ColumnMask(("accounts.card", "public.accounts.card")),
        ColumnMask(derived=True),
        ColumnMask(derived=True),  # the whole row
        ColumnMask(derived=True),
    )
    assert mask.notice is None
    assert mask.for_width(2) == (ColumnMask(derived=True),) * 2  # columns not lined up


def test_an_unknown_relation_is_derived_from_everything_with_a_notice() -> None:
    mask = mask_of("execute p")
    assert mask.columns == (ColumnMask(derived=True),)
    assert mask.notice is not None and "EXECUTE p" in mask.notice
    assert mask_of("select 1, 'a'").masked is False


def test_copy_format_reads_text_csv_and_binary_options() -> None:
    def fmt(sql: str) -> tuple[str, str, bool] | None:
        return copy_format(parse_sql(sql)[0].stmt)

    assert fmt("copy t to stdout") == ("text", "\t", False)
    assert fmt("copy t to stdout csv header") == ("csv", ",", True)
    assert fmt("copy t to stdout (format csv, delimiter ';')") == ("csv", ";", False)
    assert fmt("copy t to stdout (format binary)") == ("binary", "", False)
    assert fmt("copy t to stdout (format binary, delimiter ';')") is None
    assert fmt("copy t to stdout (format csv, quote '''')") is None


# ---- client messages ---------------------------------------------------------------------


def test_client_frames_in_any_chunks_skip_what_does_not_decide_results() -> None:
    data = (
        Query("select 1").encode()
        + CopyData(b"x" * 1000).encode()
        + Parse("s1", "select card from accounts").encode()
        + Bind("p1", "s1").encode()
        + Describe("P", "p1").encode()
        + Execute("p1", 5).encode()
        + Sync().encode()
    )
    for size in (1, 3, 7, len(data)):
        frames = ClientFrames()
        out = [m for i in range(0, len(data), size) for m in frames.feed(data[i : i + size])]
        assert [(m.kind, m.name, m.text, m.target) for m in out] == [
            ("Q", "", "select 1", ""),
            ("P", "s1", "select card from accounts", ""),
            ("B", "p1", "", "s1"),
            ("D", "Pp1", "", ""),
            ("E", "p1", "", ""),
            ("S", "", "", ""),
        ]


# ---- results tied to statements ----------------------------------------------------------


def test_a_simple_query_moves_per_statement_and_stops_at_an_error() -> None:
    units = ResultUnits()
    units.query((DIRECT, DERIVED, NOTHING))
    assert units.current() is DIRECT
    units.server(b"T")
    units.server(b"C")
    assert units.current() is DERIVED
    units.server(b"E")  # the rest of the string does not run
    assert units.current() is UNRESOLVED
    units.server(b"Z")
    assert len(units) == 0 and units.current() is UNRESOLVED


def test_extended_describe_execute_suspend_and_error_skip_to_sync() -> None:
    units = ResultUnits()
    units.describe(DIRECT)
    units.execute(DERIVED)
    units.execute(DERIVED)  # the portal again after PortalSuspended
    units.sync()
    assert units.current() is DIRECT
    units.server(b"T")
    assert units.current() is DERIVED
    units.server(b"s")
    assert units.current() is DERIVED
    units.server(b"C")
    units.server(b"Z")
    assert len(units) == 0
    units.describe(DIRECT)
    units.execute(DIRECT)
    units.sync()
    units.query((DERIVED,))
    units.server(b"E")  # Bind failed: the server skips to Sync
    assert len(units) == 2
    units.server(b"Z")
    assert units.current() is DERIVED


# ---- the masker with lineage -------------------------------------------------------------


def masker(units: ResultUnits) -> ResultMasker:
    return ResultMasker(Masker(SPEC), units=units)


CARD_FIELD = [Field("x", 0, 0, 25)]  # a computed column: no table behind it


def test_a_computed_column_derived_from_a_masked_one_is_redacted() -> None:
    units = ResultUnits()
    rw = masker(units)
    units.query((DERIVED, DIRECT, NOTHING))
    data = (
        row_description(CARD_FIELD)
        + data_row([b"1111111111111114"])
        + command_complete("SELECT 1")
        + row_description(CARD_FIELD)
        + data_row([b"4111111111111111"])
        + command_complete("SELECT 1")
        + row_description(CARD_FIELD)
        + data_row([b"4111111111111111"])
        + command_complete("SELECT 1")
        + ready_for_query("I")
    )
    assert rows_of(rw.feed(data)) == [(b"[redacted]",), (b"****1111",), (b"4111111111111111",)]
    assert len(units) == 0


def test_execute_after_describe_of_another_statement_is_planned_again() -> None:
    units = ResultUnits()
    rw = masker(units)
    units.describe(NOTHING)
    units.execute(DERIVED)
    units.sync()
    data = (
        row_description(CARD_FIELD)
        + data_row([b"4111111111111111"])
        + command_complete("SELECT 1")
        + ready_for_query("I")
    )
    assert rows_of(rw.feed(data)) == [(b"[redacted]",)]


def test_rows_without_a_description_pass_when_lineage_says_nothing_is_masked() -> None:
    units = ResultUnits()
    rw = masker(units)
    units.execute(NOTHING)
    units.execute(DERIVED)
    units.sync()
    data = (
        data_row([b"abc"])
        + command_complete("SELECT 1")
        + data_row([b"abc"])
        + command_complete("SELECT 1")
        + ready_for_query("I")
    )
    assert rows_of(rw.feed(data)) == [(b"abc",), (None,)]


def test_the_unresolved_notice_goes_once_per_statement_shape() -> None:
    units = ResultUnits()
    rw = masker(units)
    mask = mask_of("execute p")
    one = row_description(CARD_FIELD) + data_row([b"v"]) + command_complete("SELECT 1")
    units.query((mask, mask))
    out = messages(rw.feed(one + one + ready_for_query("I")))
    notices = [m for m in out if type(m).__name__ == "NoticeResponse"]
    assert len(notices) == 1
    assert rows_of(b"".join(m.encode() for m in out)) == [(b"[redacted]",), (b"[redacted]",)]


def copy_out(width: int, rows: Sequence[bytes]) -> bytes:
    return (
        CopyOutResponse(0, (0,) * width).encode()
        + b"".join(CopyData(r).encode() for r in rows)
        + encode_message(b"c", b"")
        + command_complete(f"COPY {len(rows)}")
        + ready_for_query("I")
    )


@pytest.mark.parametrize(
    ("sql", "rows", "expected"),
    [
        (
            "copy accounts (id, card) to stdout",
            [b"1\t4111111111111111\n"],
            [b"1\t****1111\n"],
        ),
        (
            "copy (select id, reverse(card) from accounts) to stdout csv header",
            [b"id,reverse\n", b'1,"1111,4"\n'],
            [b"id,reverse\n", b"1,\n"],
        ),
    ],
)
def test_copy_rows_are_masked_per_column(
    sql: str, rows: list[bytes], expected: list[bytes]
) -> None:
    units = ResultUnits()
    rw = masker(units)
    stmt = parse_sql(sql)[0].stmt
    units.query((statement_mask(analyze(sql, CATALOG)[0], SPEC, copy_format(stmt)),))
    out = messages(rw.feed(copy_out(2, rows)))
    assert [m.data for m in out if isinstance(m, CopyData)] == expected


def test_binary_copy_of_a_masked_column_is_still_refused() -> None:
    units = ResultUnits()
    rw = masker(units)
    units.query((DERIVED,))
    data = (
        CopyOutResponse(1, (1,)).encode()
        + CopyData(b"PGCOPY\n\xff\r\n\x00" + b"\0" * 8).encode()
        + encode_message(b"c", b"")
        + command_complete("COPY 0")
        + ready_for_query("I")
    )
    out = messages(rw.feed(data))
    assert any(getattr(m, "sqlstate", None) == "42501" for m in out)
    assert not [m for m in out if type(m).__name__ == "CopyData"]


def test_copy_field_spans_text_and_csv() -> None:
    assert copyrows.field_spans("a\tb\\tc\t\\N\n", "text", "\t") == [(0, 1), (2, 6), (7, 9)]
    row = 'x,"a,""b""\nc",\n'
    spans = copyrows.field_spans(row, "csv", ",")
    assert [row[s:e] for s, e in spans] == ["x", '"a,""b""\nc"', ""]
    assert copyrows.rewrite(row, spans, {1: ""}) == "x,,\n"
    assert copyrows.literal("a,b", "csv", ",") == '"a,b"'
    assert copyrows.literal("a\\b", "text", "\t") == "a\\\\b"


# ---- the planner -------------------------------------------------------------------------


class Catalogue:
    """`ask` answering from rows prepared per relation; counts the questions."""

    def __init__(self) -> None:
        self.asked: list[str] = []
        self.fail = False

    async def __call__(self, sql: str) -> Sequence[Sequence[str | None]]:
        self.asked.append(sql)
        if self.fail:
            raise OSError("side connection lost")
        rows: list[list[str | None]] = []
        if "'r'" in sql and "6163636f756e7473" in sql:  # hex of "accounts"
            rows.append(["r", None, "accounts", "public", "accounts", '["id","name","card"]', None])
        return rows


def planner() -> tuple[LineagePlanner, ResultUnits, Catalogue]:
    units = ResultUnits()
    ask = Catalogue()
    return LineagePlanner(SPEC, ask, lambda: 0.0, units), units, ask


async def test_planner_queues_masks_and_caches_per_text() -> None:
    plan, units, ask = planner()
    query = Query("select reverse(card) from accounts; select id from accounts").encode()
    await plan.client_data(query)
    assert units.current().columns == (ColumnMask(derived=True),)
    asked = len(ask.asked)
    await plan.client_data(query)
    assert len(ask.asked) == asked  # cached per statement text
    await plan.client_data(Query("create table t (a int)").encode())
    await plan.client_data(query)
    assert len(ask.asked) > asked  # DDL dropped the catalog


async def test_planner_follows_cursors_and_prepared_statements() -> None:
    plan, units, _ = planner()
    await plan.client_data(
        Query("declare c cursor for select card, reverse(card) from accounts").encode()
        + Query("fetch 1 from c").encode()
        + Query("fetch 1 from nowhere").encode()
        + Parse("s", "select reverse(card) from accounts").encode()
        + Bind("p", "s").encode()
        + Describe("S", "s").encode()
        + Execute("p").encode()
        + Execute("unknown").encode()
        + Sync().encode()
    )
    assert units.current() is NOTHING  # DECLARE returns no rows
    units.server(b"C")
    units.server(b"Z")
    assert units.current().columns == (
        ColumnMask(("accounts.card", "public.accounts.card")),
        ColumnMask(derived=True),
    )
    units.server(b"Z")
    assert units.current() is UNRESOLVED  # a cursor this session did not declare
    units.server(b"Z")
    assert units.current().columns == (ColumnMask(derived=True),)  # Describe
    units.server(b"T")
    assert units.current().columns == (ColumnMask(derived=True),)  # Execute
    units.server(b"C")
    assert units.current() is UNRESOLVED  # a portal never bound


async def test_a_catalog_that_cannot_be_asked_masks_every_column() -> None:
    plan, units, ask = planner()
    ask.fail = True
    await plan.client_data(Query("select id from accounts").encode())
    assert units.current() is UNRESOLVED


async def test_search_path_changes_go_with_each_catalog_lookup() -> None:
    plan, _, ask = planner()
    await plan.client_data(Query("set search_path to other, public").encode())
    await plan.client_data(Query("select card from accounts").encode())
    assert ask.asked[-1].startswith("SET search_path TO 'other', 'public'; SELECT"), ask.asked


def test_what_reads_data_by_itself_is_masked_whole_and_named() -> None:
    catalog = SessionCatalog(lambda: 0.0)
    catalog.learn(
        [
            ["r", None, "accounts", "public", "accounts", '["id","name","card"]', None],
            [
                "r",
                None,
                "pg_stats",
                "pg_catalog",
                "pg_stats",
                '["attname","most_common_vals"]',
                "x",
            ],
            ["f", None, "plp", "public", "plpgsql", "false", None],
            ["f", None, "query_to_xml", "pg_catalog", "internal", "true", None],
            ["f", None, "upper", "pg_catalog", "internal", "true", None],
        ],
        [(None, "accounts"), (None, "pg_stats")],
        [(None, "plp"), (None, "query_to_xml"), (None, "upper")],
    )
    opaque = FailClosedCatalog(catalog)
    for sql in (
        "select plp(1)",
        "select query_to_xml('select card from accounts', true, false, '')",
        "select vals from pg_stats",
    ):
        mask = statement_mask(analyze(sql, opaque)[0], SPEC)
        assert mask.columns == (ColumnMask(derived=True),), sql
    assert (
        statement_mask(analyze("select upper(name) from accounts", opaque)[0], SPEC).masked is False
    )
    assert [opaque.reason(f"wardgate_opaque_{i}") for i in range(3)] == [
        "function public.plp (plpgsql) is not followed",
        "function pg_catalog.query_to_xml (internal) is not followed",
        "pg_catalog.pg_stats holds samples of column values",
    ]


async def test_a_table_filled_with_masked_data_is_masked_after() -> None:
    plan, units, _ = planner()
    await plan.client_data(
        Query("create temp table t1 as select card as c from accounts").encode()
        + Query("select c from t1").encode()
    )
    units.server(b"Z")
    assert units.current().columns == (ColumnMask(derived=True),)


def test_errors_of_a_statement_reading_a_masked_column_lose_their_text() -> None:
    units = ResultUnits()
    rw = masker(units)
    units.query((mask_of("select card::int from accounts"), NOTHING))
    units.query((NOTHING,))
    error = error_response("22003", 'value "4111111111111111" is out of range', severity="ERROR")
    out = rw.feed(error + ready_for_query("I") + error + ready_for_query("I"))
    first, _, second, _ = messages(out)
    assert "4111" not in str(first) and getattr(first, "sqlstate", None) == "22003"
    assert "4111" in str(second)  # a statement reading nothing masked keeps its text


async def test_a_shape_is_planned_once_until_the_catalog_ttl_passes() -> None:
    now = [0.0]
    units = ResultUnits()
    ask = Catalogue()
    plan = LineagePlanner(SPEC, ask, lambda: now[0], units)
    for aid in (1, 2, 3):  # one shape: constants are parameters
        await plan.client_data(Query(f"select card from accounts where id = {aid}").encode())
    assert len(ask.asked) == 1
    now[0] = 11.0  # another session may have replaced a view meanwhile
    await plan.client_data(Query("select card from accounts where id = 4").encode())
    assert len(ask.asked) == 2
