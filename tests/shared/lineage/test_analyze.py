"""Lineage of statements over a small in-memory catalog: one table of cases per family.

Each case names, per result column, the sources it derives from (`table.column`, `*` for a
part the analysis could not name), and the clause uses it finds (clause, source, kind).
"""

from __future__ import annotations

import inspect
import sys

import pytest
from pglast import parse_sql

from shared.lineage import (
    ANY,
    UNKNOWN,
    Function,
    Lineage,
    MemoryCatalog,
    Relation,
    analyze,
    analyze_statement,
)


def _catalog() -> MemoryCatalog:
    cat = MemoryCatalog()
    cat.add(Relation("public", "accounts", ("id", "name", "card", "email")))
    cat.add(Relation("public", "orders", ("id", "account_id", "card_used", "total")))
    cat.add(Relation("crm", "contacts", ("id", "phone")))
    cat.add(
        Relation(
            "public",
            "cards_v",
            ("id", "c"),
            "SELECT accounts.id, accounts.card AS c FROM accounts",
        )
    )
    cat.add(
        Relation(
            "public",
            "visa_v",
            ("id",),
            "SELECT accounts.id FROM accounts WHERE accounts.card LIKE '4%'",
        )
    )
    cat.add(Relation("public", "nested_v", ("x",), "SELECT upper(c) AS x FROM cards_v"))
    cat.add_function(
        Function("public", "get_card", "sql", False, "SELECT card FROM accounts WHERE id = $1")
    )
    cat.add_function(Function("public", "cards_of", "sql", False, "SELECT id, card FROM accounts"))
    cat.add_function(Function("public", "ident", "sql", False, "SELECT $1"))
    cat.add_function(Function("public", "opaque", "plpgsql", False, None))
    for name in ("encode", "upper", "reverse", "translate", "substr", "left", "right", "ascii"):
        cat.add_function(Function("pg_catalog", name, "internal", True))
    return cat


CATALOG = _catalog()


def lineage(sql: str) -> Lineage:
    (out,) = analyze(sql, CATALOG)
    return out


def sources(sql: str) -> list[tuple[str, set[str]]]:
    return [(c.name, {_show(s) for s in c.sources}) for c in lineage(sql).columns]


def _show(source: object) -> str:
    return str(source)


CARD = {"accounts.card"}
ALL_ACCOUNTS = {"accounts.id", "accounts.name", "accounts.card", "accounts.email"}

# (statement, [(result column, its sources)])
COLUMNS: list[tuple[str, list[tuple[str, set[str]]]]] = [
    # plain and aliased columns
    ("SELECT card FROM accounts", [("card", CARD)]),
    ("SELECT a.card AS x FROM accounts a", [("x", CARD)]),
    ("SELECT public.accounts.card FROM public.accounts", [("card", CARD)]),
    (
        "SELECT id, 1, 'x' FROM accounts",
        [("id", {"accounts.id"}), ("?column?", set()), ("?column?", set())],
    ),
    # the six leak families of issue 17
    ("SELECT encode(card::bytea, 'hex') AS hex_out FROM accounts", [("hex_out", CARD)]),
    ("SELECT encode(convert_to(card, 'UTF8'), 'base64') FROM accounts", [("encode", CARD)]),
    ("SELECT reverse(card) FROM accounts", [("reverse", CARD)]),
    ("SELECT translate(card, '0123456789', 'abcdefghij') t FROM accounts", [("t", CARD)]),
    (
        "SELECT substr(card, 1, 8) a, right(card, 8) b, left(card, 4) c FROM accounts",
        [("a", CARD), ("b", CARD), ("c", CARD)],
    ),
    (
        "SELECT ascii(substr(card, 1, 1)), array_to_string(ARRAY(SELECT ascii(x) FROM "
        "regexp_split_to_table(card, '') x), ',') FROM accounts",
        [("ascii", CARD), ("array_to_string", CARD)],
    ),
    ("SELECT card::bigint + 1, card || '' AS c2 FROM accounts", [("?column?", CARD), ("c2", CARD)]),
    # CASE, COALESCE, operators
    ("SELECT CASE WHEN card LIKE '4%' THEN 'visa' END FROM accounts", [("case", CARD)]),
    ("SELECT coalesce(NULL, email) FROM accounts", [("coalesce", {"accounts.email"})]),
    # aggregates and window functions
    ("SELECT string_agg(card, ',') FROM accounts", [("string_agg", CARD)]),
    (
        "SELECT json_agg(email ORDER BY id) FROM accounts",
        [("json_agg", {"accounts.email", "accounts.id"})],
    ),
    ("SELECT count(*) FILTER (WHERE card > '4') FROM accounts", [("count", CARD)]),
    (
        "SELECT lag(card) OVER (ORDER BY id) FROM accounts",
        [("lag", {"accounts.card", "accounts.id"})],
    ),
    (
        "SELECT rank() OVER w FROM accounts WINDOW w AS (ORDER BY card)",
        [("rank", CARD)],
    ),
    # subqueries
    ("SELECT (SELECT card FROM accounts LIMIT 1) AS c", [("c", CARD)]),
    ("SELECT x.c FROM (SELECT reverse(card) c FROM accounts) x", [("c", CARD)]),
    ("SELECT ARRAY(SELECT email FROM accounts)", [("array", {"accounts.email"})]),
    ("SELECT 1 IN (SELECT card FROM accounts)", [("?column?", CARD)]),
    ("SELECT EXISTS (SELECT 1 FROM accounts)", [("exists", set())]),
    # CTEs, recursive too
    ("WITH c AS (SELECT card AS k FROM accounts) SELECT k FROM c", [("k", CARD)]),
    (
        "WITH RECURSIVE r(n, s) AS (SELECT 1, ''::text UNION ALL "
        "SELECT n + 1, s || (SELECT min(card) FROM accounts) FROM r WHERE n < 3) SELECT s FROM r",
        [("s", CARD)],
    ),
    # set operations: column i of each branch
    (
        "SELECT id, name FROM accounts UNION SELECT 1, email FROM accounts",
        [("id", {"accounts.id"}), ("name", {"accounts.name", "accounts.email"})],
    ),
    ("SELECT 'x' INTERSECT SELECT card FROM accounts", [("?column?", CARD)]),
    ("SELECT name FROM accounts EXCEPT SELECT 'a'", [("name", {"accounts.name"})]),
    # LATERAL
    (
        "SELECT l.x FROM accounts a, LATERAL (SELECT upper(a.card) x) l",
        [("x", CARD)],
    ),
    (
        "SELECT t.v FROM accounts a CROSS JOIN LATERAL unnest(ARRAY[a.email]) AS t(v)",
        [("v", {"accounts.email"})],
    ),
    (  # a function in FROM sees the items before it without LATERAL
        "SELECT x FROM accounts a, regexp_split_to_table(a.card, '') x",
        [("x", CARD)],
    ),
    # whole-row references
    ("SELECT a FROM accounts a", [("a", ALL_ACCOUNTS)]),
    ("SELECT row_to_json(a) FROM accounts a", [("row_to_json", ALL_ACCOUNTS)]),
    ("SELECT to_jsonb(accounts) FROM accounts", [("to_jsonb", ALL_ACCOUNTS)]),
    ("SELECT (a).card FROM accounts a", [("card", ALL_ACCOUNTS)]),
    # SELECT *
    (
        "SELECT * FROM crm.contacts",
        [("id", {"contacts.id"}), ("phone", {"contacts.phone"})],
    ),
    (
        "SELECT o.*, a.card FROM orders o JOIN accounts a ON a.id = o.account_id",
        [
            ("id", {"orders.id"}),
            ("account_id", {"orders.account_id"}),
            ("card_used", {"orders.card_used"}),
            ("total", {"orders.total"}),
            ("card", CARD),
        ],
    ),
    ("SELECT * FROM (VALUES (1, 'a')) v(n, s)", [("n", set()), ("s", set())]),
    # views and SQL functions
    ("SELECT c FROM cards_v", [("c", CARD)]),
    ("SELECT * FROM nested_v", [("x", CARD)]),
    ("SELECT get_card(1)", [("get_card", CARD)]),
    ("SELECT ident(card) FROM accounts", [("ident", CARD)]),
    ("SELECT f.card FROM cards_of() f", [("card", CARD)]),
    ("SELECT opaque(email) FROM accounts", [("opaque", {"accounts.email"})]),
    # DML RETURNING, COPY, cursors
    ("DELETE FROM accounts WHERE id = 1 RETURNING card", [("card", CARD)]),
    (
        "UPDATE orders SET total = 0 RETURNING reverse(card_used)",
        [("reverse", {"orders.card_used"})],
    ),
    (
        "INSERT INTO orders (id, card_used) SELECT id, card FROM accounts RETURNING card_used",
        [("card_used", {"orders.card_used", "accounts.card"})],
    ),
    ("COPY (SELECT reverse(card) FROM accounts) TO STDOUT", [("reverse", CARD)]),
    ("COPY accounts (id, card) TO STDOUT", [("id", {"accounts.id"}), ("card", CARD)]),
    ("COPY crm.contacts TO STDOUT", [("id", {"contacts.id"}), ("phone", {"contacts.phone"})]),
    ("DECLARE c CURSOR FOR SELECT left(card, 6) FROM accounts", [("left", CARD)]),
    ("EXPLAIN SELECT card FROM accounts", [("QUERY PLAN", set())]),
]


@pytest.mark.parametrize(("sql", "expected"), COLUMNS, ids=[c[0][:60] for c in COLUMNS])
def test_result_columns_derive_from_their_sources(
    sql: str, expected: list[tuple[str, set[str]]]
) -> None:
    assert sources(sql) == expected
    assert lineage(sql).unresolved == () or "opaque" in sql


# (statement, {(clause, source, kind)})
USES: list[tuple[str, set[tuple[str, str, str]]]] = [
    ("SELECT id FROM accounts WHERE card LIKE '4111%'", {("WHERE", "accounts.card", "other")}),
    ("SELECT id FROM accounts WHERE card = $1", {("WHERE", "accounts.card", "lookup")}),
    ("SELECT id FROM accounts WHERE '4111' = card", {("WHERE", "accounts.card", "lookup")}),
    ("SELECT id FROM accounts WHERE card IN ('a', $1)", {("WHERE", "accounts.card", "lookup")}),
    ("SELECT id FROM accounts WHERE card IS NOT NULL", {("WHERE", "accounts.card", "null")}),
    ("SELECT id FROM accounts WHERE card = ANY($1)", {("WHERE", "accounts.card", "lookup")}),
    ("SELECT id FROM accounts WHERE card <> ALL ('{a}')", {("WHERE", "accounts.card", "lookup")}),
    ("SELECT id FROM accounts WHERE card = lower($1)", {("WHERE", "accounts.card", "lookup")}),
    (
        "SELECT id FROM accounts WHERE card IS NOT DISTINCT FROM $1",
        {("WHERE", "accounts.card", "lookup")},
    ),
    ("SELECT id FROM accounts WHERE $1 IN (card)", {("WHERE", "accounts.card", "lookup")}),
    (
        "SELECT id FROM accounts WHERE card IN (name, 'x')",
        {("WHERE", "accounts.card", "other"), ("WHERE", "accounts.name", "other")},
    ),
    (
        "SELECT id FROM accounts WHERE card = ANY (ARRAY[name])",
        {("WHERE", "accounts.card", "equality"), ("WHERE", "accounts.name", "other")},
    ),
    ("SELECT id FROM accounts WHERE card = (SELECT 'x')", {("WHERE", "accounts.card", "lookup")}),
    ("SELECT id FROM accounts WHERE lower(card) = 'x'", {("WHERE", "accounts.card", "other")}),
    (
        "SELECT id FROM accounts WHERE id = 1 AND NOT (card = $1 OR card > '5')",
        {
            ("WHERE", "accounts.id", "lookup"),
            ("WHERE", "accounts.card", "lookup"),
            ("WHERE", "accounts.card", "other"),
        },
    ),
    (
        "SELECT o.id FROM orders o JOIN accounts a ON a.card = o.card_used",
        {("JOIN", "accounts.card", "equality"), ("JOIN", "orders.card_used", "equality")},
    ),
    (
        "SELECT 1 FROM accounts JOIN (SELECT card AS email FROM accounts) x USING (email)",
        {("JOIN", "accounts.email", "equality"), ("JOIN", "accounts.card", "equality")},
    ),
    (
        "SELECT count(*) FROM accounts GROUP BY card",
        {("GROUP BY", "accounts.card", "group")},
    ),
    (
        "SELECT left(card, 1), count(*) FROM accounts GROUP BY 1",
        {("GROUP BY", "accounts.card", "other")},
    ),
    (
        "SELECT count(*) FROM accounts GROUP BY ROLLUP (name, substr(card, 1, 2))",
        {("GROUP BY", "accounts.name", "group"), ("GROUP BY", "accounts.card", "other")},
    ),
    (
        "SELECT name FROM accounts GROUP BY name HAVING max(card) > '4'",
        {("GROUP BY", "accounts.name", "group"), ("HAVING", "accounts.card", "other")},
    ),
    ("SELECT id FROM accounts ORDER BY card", {("ORDER BY", "accounts.card", "other")}),
    ("SELECT card AS k FROM accounts ORDER BY k DESC", {("ORDER BY", "accounts.card", "other")}),
    ("SELECT id, reverse(card) FROM accounts ORDER BY 2", {("ORDER BY", "accounts.card", "other")}),
    (
        "SELECT DISTINCT ON (card) id FROM accounts",
        {("DISTINCT ON", "accounts.card", "group")},
    ),
    (
        "SELECT DISTINCT name, left(card, 1) FROM accounts",
        {("DISTINCT", "accounts.name", "group"), ("DISTINCT", "accounts.card", "other")},
    ),
    (
        "SELECT row_number() OVER (PARTITION BY name ORDER BY card) FROM accounts",
        {
            ("window PARTITION BY", "accounts.name", "group"),
            ("window ORDER BY", "accounts.card", "other"),
        },
    ),
    (
        "SELECT sum(total) OVER w FROM orders WINDOW w AS (PARTITION BY card_used)",
        {("window PARTITION BY", "orders.card_used", "group")},
    ),
    (
        "SELECT id FROM orders WHERE account_id IN (SELECT id FROM accounts WHERE card > '4')",
        {
            ("WHERE", "orders.account_id", "other"),
            ("WHERE", "accounts.card", "other"),
            ("WHERE", "accounts.id", "other"),
        },
    ),
    (
        "SELECT 1 FROM orders o WHERE EXISTS (SELECT 1 FROM accounts a WHERE a.id = o.account_id "
        "AND a.card LIKE '4%')",
        {
            ("WHERE", "accounts.id", "equality"),
            ("WHERE", "orders.account_id", "equality"),
            ("WHERE", "accounts.card", "other"),
        },
    ),
    ("SELECT id FROM visa_v", {("WHERE", "accounts.card", "other")}),
    (
        "WITH c AS (SELECT card FROM accounts) SELECT 1 FROM c WHERE card = $1",
        {("WHERE", "accounts.card", "lookup")},
    ),
    (
        "UPDATE orders SET total = 1 WHERE card_used LIKE '4%'",
        {("WHERE", "orders.card_used", "other")},
    ),
    (
        "DELETE FROM orders USING accounts a WHERE a.card = orders.card_used",
        {("WHERE", "accounts.card", "equality"), ("WHERE", "orders.card_used", "equality")},
    ),
    (
        "SELECT id FROM accounts LIMIT (SELECT ascii(card) FROM accounts LIMIT 1)",
        {("LIMIT", "accounts.card", "other")},
    ),
    (
        "EXPLAIN ANALYZE SELECT id FROM accounts WHERE card < '5'",
        {("WHERE", "accounts.card", "other")},
    ),
    ("SELECT id FROM accounts WHERE id = 1", {("WHERE", "accounts.id", "lookup")}),
    (
        "SELECT count(*) FILTER (WHERE card LIKE '4%') FROM accounts",
        {("aggregate FILTER", "accounts.card", "other")},
    ),
    (
        "SELECT string_agg(name, ',' ORDER BY card) FROM accounts",
        {("aggregate ORDER BY", "accounts.card", "other")},
    ),
    (
        "INSERT INTO accounts (id) VALUES (1) ON CONFLICT (id) DO UPDATE SET name = "
        "excluded.name WHERE accounts.card LIKE '4%' RETURNING id",
        {("WHERE", "accounts.card", "other")},
    ),
    ("SELECT query_to_xml('select 1', true, false, '')", {("query_to_xml()", "*.*", "other")}),
    ("SELECT table_to_xml('accounts', true, false, '')", {("table_to_xml()", "*.*", "other")}),
    ("DO $$ BEGIN PERFORM 1; END $$", {("DO block", "*.*", "other")}),
    (
        "SELECT generate_series(1, ascii(card)) FROM accounts",
        {("set-returning function", "accounts.card", "other")},
    ),
    (
        "SELECT g FROM accounts a, generate_series(1, length(a.card)) g",
        {("FROM function", "accounts.card", "other")},
    ),
]


@pytest.mark.parametrize(("sql", "expected"), USES, ids=[u[0][:60] for u in USES])
def test_clause_uses_are_found_and_told_apart(
    sql: str, expected: set[tuple[str, str, str]]
) -> None:
    assert {(u.clause, str(u.source), u.kind) for u in lineage(sql).uses} == expected


def test_writes_that_copy_data_are_reported() -> None:
    for sql, target in [
        ("CREATE TABLE leak AS SELECT reverse(card) r FROM accounts", "leak"),
        ("SELECT card INTO leak2 FROM accounts", "leak2"),
        ("INSERT INTO orders (card_used) SELECT card FROM accounts", "orders"),
        ("UPDATE accounts SET name = card", "accounts"),
    ]:
        writes = lineage(sql).writes
        assert [w.target for w in writes] == [target], sql
        assert any(str(s) == "accounts.card" for w in writes for c in w.columns for s in c.sources)
    assert lineage("INSERT INTO orders (id) VALUES (1)").writes == ()


def test_paths_read_from_the_result_back_to_the_source() -> None:
    (column,) = lineage("SELECT encode(card, 'hex') AS hex_out FROM accounts").columns
    (source,) = column.sources
    assert column.path(source) == "hex_out <- encode(card, 'hex') <- accounts.card"
    (column,) = lineage("SELECT reverse(card::text) FROM accounts").columns
    assert column.path(source) == (
        "reverse <- reverse(CAST(card AS text)) <- CAST(card AS text) <- accounts.card"
    )
    assert not column.direct(source)
    (column,) = lineage("SELECT c AS plain FROM cards_v").columns
    (source,) = column.sources
    assert column.direct(source)  # through a view, unchanged
    assert column.path(source) == "plain <- cards_v.c <- accounts.card"


@pytest.mark.parametrize(
    ("sql", "reason"),
    [
        ("SELECT secret FROM nowhere", "relation nowhere is not in the catalog"),
        ("SELECT * FROM other.t", "relation other.t is not in the catalog"),
        ("SELECT nosuch FROM accounts", "column nosuch cannot be resolved"),
        ("EXECUTE p(1)", "EXECUTE p: a statement prepared with PREPARE is not followed"),
        (
            "SELECT opaque(card) FROM accounts",
            "function public.opaque (plpgsql) cannot be seen into",
        ),
    ],
)
def test_what_cannot_be_resolved_is_derived_from_anything(sql: str, reason: str) -> None:
    found = lineage(sql)
    assert any(r.startswith(reason) for r in found.unresolved), found.unresolved
    assert found.columns and all(c.sources for c in found.columns)
    if "opaque" not in sql:
        assert all(any(ANY in (s.table, s.column) for s in c.sources) for c in found.columns)


def test_unknown_relations_in_clauses_are_uses_of_anything() -> None:
    (use,) = lineage("SELECT 1 FROM nowhere WHERE x LIKE 'a%'").uses
    assert (use.clause, use.source.table, use.source.column, use.kind) == (
        "WHERE",
        "nowhere",
        ANY,
        "other",
    )


def test_a_view_that_refers_to_itself_is_not_followed_forever() -> None:
    cat = MemoryCatalog().add(Relation("public", "loop", ("x",), "SELECT x FROM loop"))
    (found,) = analyze("SELECT x FROM loop", cat)
    assert any("nested too deep" in r for r in found.unresolved)
    assert all(c.sources for c in found.columns)


def test_several_statements_each_get_their_lineage() -> None:
    first, second = analyze("SELECT card FROM accounts; SELECT id FROM accounts", CATALOG)
    assert [c.name for c in first.columns] == ["card"]
    assert [c.name for c in second.columns] == ["id"]


def test_a_statement_too_deep_to_follow_is_a_use_of_anything() -> None:
    nested = "SELECT id FROM accounts WHERE " + "upper(" * 60 + "card" + ")" * 60 + " = 'x'"
    (stmt,) = [raw.stmt for raw in parse_sql(nested)]
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(len(inspect.stack()) + 120)  # the analysis runs out, not the test
    try:
        found = analyze_statement(stmt, CATALOG)
    finally:
        sys.setrecursionlimit(limit)
    assert found.unresolved == ("the statement nests too deep to follow",)
    (use,) = found.uses
    assert (use.clause, use.source, use.kind) == ("the statement", UNKNOWN, "other")
