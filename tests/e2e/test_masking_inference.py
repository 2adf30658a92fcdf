"""Inference refusals end to end: a masked column must not filter, join, group or order rows.

One PostgreSQL database (accounts with a card, an email and an SSN; orders; a view and a SQL
function that read the card), one gateway whose column rules mask the card (redact), the
email (token, with `allow_lookup`) and the SSN (partial) for the admin user, one agent.
psycopg sends parameterised statements with the extended protocol, and psql with the
simple one; both are checked.
"""

from __future__ import annotations

import dataclasses
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from psycopg import errors, sql

from gateway.crypto import SecretBox
from tests.fixtures.postgres import PostgresServer
from tests.fixtures.wardgate import ADMIN_TOKEN, WARDGATE, GatewayProc, Wardgate

pytestmark = pytest.mark.e2e

APP_PASSWORD = "infer-app-secret-Kq2"
ACCOUNTS = [
    (1, "Alice", "4111111111111111", "alice@example.com", "123-45-6789"),
    (2, "Bob", "5500000000000004", "bob@example.org", None),
]
MASKING = [
    {
        "name": "cards",
        "match": {"users": ["admin"], "connections": ["pg-main"]},
        "columns": ["accounts.card", "orders.card_used"],
        "strategy": "redact",
    },
    {
        "name": "emails",
        "match": {"users": ["admin"], "connections": ["pg-main"]},
        "columns": ["accounts.email"],
        "strategy": "token",
        "allow_lookup": True,
    },
    {
        "name": "ssn",
        "match": {"users": ["admin"], "connections": ["pg-main"]},
        "columns": ["ssn"],
        "strategy": "partial",
    },
]


@dataclass
class Stack:
    wg: Wardgate
    gw: GatewayProc

    def conninfo(self) -> str:
        return (
            f"host=127.0.0.1 port={self.gw.public_port} dbname=pg-main user=admin "
            f"password={ADMIN_TOKEN} sslmode=verify-full sslrootcert={self.gw.ca_path}"
        )

    def psql(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["psql", self.conninfo(), "-X", "-At", "-F", "|", *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, postgres_server: PostgresServer
) -> Iterator[Stack]:
    with postgres_server.connect() as admin:
        admin.execute(sql.SQL("drop database if exists inferapp"))
        admin.execute(sql.SQL("drop role if exists infer_app"))
        admin.execute(
            sql.SQL("create role infer_app login password {}").format(sql.Literal(APP_PASSWORD))
        )
        admin.execute(sql.SQL("create database inferapp owner infer_app"))
    db = dataclasses.replace(postgres_server, dbname="inferapp")
    with psycopg.connect(db.dsn(), autocommit=True) as conn:
        conn.execute("set role infer_app")
        conn.execute(
            "create table accounts (id int primary key, name text, card text, email text, ssn text)"
        )
        conn.execute("create table orders (id int primary key, account_id int, card_used text)")
        for row in ACCOUNTS:
            conn.execute("insert into accounts values (%s, %s, %s, %s, %s)", row)
        conn.execute("insert into orders values (1, 1, '4111111111111111'), (2, 2, NULL)")
        conn.execute("create view visa as select id from accounts where card like '4%'")
        conn.execute(
            "create function card_of(int) returns text language sql stable"
            " as 'select card from accounts where id = $1'"
        )
        conn.execute(
            "create function ids_by_card(text) returns setof int language sql stable"
            " as 'select id from accounts where card like $1'"
        )
        conn.execute(
            "create function chars(text) returns setof text language sql immutable"
            " as $$select regexp_split_to_table($1, '')$$"
        )
    wg = Wardgate(tmp_path_factory.mktemp("inference"))
    try:
        gw = wg.gateway(secret_key=SecretBox.generate_key(), policy={"masking": MASKING})
        wg.agent(gw, gw.create_agent("default"), wait="default")
        gw.create_connection(
            name="pg-main",
            type="postgres",
            host="127.0.0.1",
            port=postgres_server.port,
            database="inferapp",
            username="infer_app",
            password=APP_PASSWORD,
        )
        yield Stack(wg, gw)
    finally:
        wg.close()


# (statement, parameters, masked column and clause the refusal names)
REFUSED: list[tuple[str, tuple[Any, ...], str, str]] = [
    ("select id from accounts where card like '4111%'", (), "accounts.card", "WHERE"),
    ("select id from accounts where left(card, 1) = %s", ("4",), "accounts.card", "WHERE"),
    ("select id from accounts where card = %s", ("4111111111111111",), "accounts.card", "WHERE"),
    ("select id from accounts order by card", (), "accounts.card", "ORDER BY"),
    ("select left(card, 2), count(*) from accounts group by 1", (), "accounts.card", "GROUP BY"),
    (
        "select name from accounts group by name having max(card) > '4'",
        (),
        "accounts.card",
        "HAVING",
    ),
    ("select distinct on (card) id from accounts", (), "accounts.card", "DISTINCT ON"),
    ("select distinct left(card, 4) from accounts", (), "accounts.card", "DISTINCT"),
    (
        "select row_number() over (order by card) from accounts",
        (),
        "accounts.card",
        "window ORDER BY",
    ),
    (
        "select count(*) over (partition by substr(card, 1, 1)) from accounts",
        (),
        "accounts.card",
        "window PARTITION BY",
    ),
    (
        "select o.id from orders o join accounts a on a.card = o.card_used",
        (),
        "accounts.card",
        "JOIN",
    ),
    ("select * from accounts a where a.email like '%.org'", (), "accounts.email", "WHERE"),
    ("select * from accounts where ssn is null", (), "accounts.ssn", "WHERE"),
    ("select id from visa", (), "accounts.card", "WHERE"),  # inside the view
    ("select * from ids_by_card('4%')", (), "accounts.card", "WHERE"),  # inside the function
    (
        "select id from orders where account_id in (select id from accounts where card > %s)",
        ("4",),
        "accounts.card",
        "WHERE",
    ),
    (
        "select generate_series(1, ascii(card)) from accounts",
        (),
        "accounts.card",
        "set-returning function",
    ),
    ("select chars(card) from accounts", (), "accounts.card", "set-returning function"),
    (
        "select x from accounts a, regexp_split_to_table(a.card, '') x",
        (),
        "accounts.card",
        "FROM function",
    ),
    (
        "select count(*) filter (where card like '4%') from accounts",
        (),
        "accounts.card",
        "aggregate FILTER",
    ),
    (
        "select string_agg(name, ',' order by card) from accounts",
        (),
        "accounts.card",
        "aggregate ORDER BY",
    ),
    (
        "with c as (select id, card from accounts) select id from c where card like '5%'",
        (),
        "accounts.card",
        "WHERE",
    ),
]


@pytest.mark.parametrize(
    ("query", "params", "column", "clause"), REFUSED, ids=[r[0] for r in REFUSED]
)
def test_inference_through_a_masked_column_is_refused(
    stack: Stack, query: str, params: tuple[Any, ...], column: str, clause: str
) -> None:
    with psycopg.connect(stack.conninfo(), autocommit=True) as conn:
        with pytest.raises(errors.InsufficientPrivilege) as refused:
            conn.execute(query, params or None)
        message = str(refused.value)
        assert f"masked column {column}" in message, message
        assert f"is used in {clause} (" in message, message
        assert conn.execute("select 1").fetchone() == (1,)  # the session goes on


def test_the_simple_protocol_is_refused_alike_and_audited(stack: Stack) -> None:
    out = stack.psql("-c", "select id from accounts where card like '4%'", "-c", "select 42")
    assert "masked column accounts.card (rule 'cards') is used in WHERE" in out.stderr, out
    assert out.stdout.strip() == "42"
    refusals = [
        e["data"] for e in stack.gw.audit("pg.refused") if "accounts.card" in e["data"]["reason"]
    ]
    assert refusals, "no pg.refused event"
    assert refusals[-1]["rules"] == ["cards"]
    assert refusals[-1]["text"] == "select id from accounts where card like '4%'"


def test_lookups_allowed_by_the_rule_pass(stack: Stack) -> None:
    with psycopg.connect(stack.conninfo(), autocommit=True) as conn:
        found = conn.execute("select id from accounts where email = %s", ("bob@example.org",))
        assert found.fetchall() == [(2,)]
        found = conn.execute("select id from accounts where email in ('x', 'alice@example.com')")
        assert found.fetchall() == [(1,)]
        assert conn.execute("select count(*) from accounts where email is not null").fetchone() == (
            2,
        )
        for _ in range(2):  # prepared: Parse once, Bind and Execute each time
            row = conn.execute(
                "select id, email from accounts where email = %s",
                ("alice@example.com",),
                prepare=True,
            ).fetchone()
            assert row is not None and row[0] == 1 and row[1].startswith("tok_")


def test_statements_that_do_not_use_masked_columns_are_unaffected(stack: Stack) -> None:
    with psycopg.connect(stack.conninfo(), autocommit=True) as conn:
        rows = conn.execute("select id, name from accounts where name like 'A%' order by id")
        assert rows.fetchall() == [(1, "Alice")]
        counts = conn.execute("select account_id, count(*) from orders group by 1 order by 1")
        assert counts.fetchall() == [(1, 1), (2, 1)]
        joined = conn.execute(
            "select a.name from accounts a join orders o on o.account_id = a.id order by o.id"
        )
        assert joined.fetchall() == [("Alice",), ("Bob",)]
        card = conn.execute("select card_of(1), card from accounts where id = 1").fetchone()
        assert card is not None and "4111" not in str(card[1])


def test_policy_explain_shows_lineage_paths_and_clause_refusals(stack: Stack) -> None:
    def explain(query: str) -> str:
        out = stack.wg.cli(
            stack.gw,
            *("policy", "explain", "--user", "admin", "--connection", "pg-main", "--sql", query),
        )
        assert out.returncode == 0, out.stderr
        return out.stdout

    shown = explain("select encode(card::bytea, 'hex') as hex_out, id from accounts")
    assert "decision: allow" in shown, shown
    assert (
        "lineage: column hex_out masked by cards (derived): hex_out <- "
        "encode(CAST(card AS bytea), 'hex') <- CAST(card AS bytea) <- accounts.card"
    ) in shown, shown
    assert "lineage: column id" not in shown
    shown = explain("select * from visa order by id")  # the view's WHERE reads the card
    assert "decision: deny" in shown, shown
    assert (
        "lineage: refused: policy: masked column accounts.card (rule 'cards') is used in "
        "WHERE (accounts.card ~~ CAST('4%' AS text))"
    ) in shown, shown
    shown = explain("create table copy as select reverse(card) from accounts")
    assert "lineage: write into copy copies accounts.card" in shown, shown
    assert "reason: policy: this statement copies masked column accounts.card" in shown
    shown = explain("select name from accounts")
    assert "lineage: no result column or clause uses a masked column" in shown, shown


def test_policy_explain_takes_the_statement_once() -> None:
    out = subprocess.run(
        [*WARDGATE, "policy", "explain", "--user", "u", "--connection", "c"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 2
    assert "give the statement once: as the SQL argument or with --sql" in out.stderr


def test_a_changed_search_path_does_not_hide_a_masked_column(stack: Stack) -> None:
    with psycopg.connect(stack.conninfo(), autocommit=True) as conn:
        conn.execute("set search_path to pg_temp, public")
        with pytest.raises(errors.InsufficientPrivilege) as refused:
            conn.execute("select id from accounts where card like '4%'")
        assert "masked column accounts.card (rule 'cards') is used in WHERE" in str(refused.value)
        rows = conn.execute("select name from accounts where id = 1").fetchall()
        assert rows == [("Alice",)]
        conn.execute("create temporary table accounts (id int, card text)")  # shadows it
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("select id from accounts where card like '4%'")


def test_copying_a_masked_column_where_no_rule_masks_it_is_refused(stack: Stack) -> None:
    with psycopg.connect(stack.conninfo(), autocommit=True) as conn:
        with pytest.raises(errors.InsufficientPrivilege) as refused:
            conn.execute("create table leak as select id, reverse(card) as r from accounts")
        assert str(refused.value) == (
            "policy: this statement copies masked column accounts.card (rule 'cards') into "
            "leak.r, which the rule does not mask; masked data may not be copied"
        )
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("update accounts set name = card where id = 2")
        # into a column the same rule masks: allowed (and read back masked)
        conn.execute("begin")
        conn.execute("insert into orders (id, card_used) select 10 + id, card from accounts")
        conn.execute("rollback")
