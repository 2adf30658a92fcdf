"""Masking end to end: rules in the gateway config, applied by the agent, real psql/psycopg.

One PostgreSQL database with customers and orders, one gateway whose `policy.masking`
masks for the admin user on `pg-main` (column rules and detectors) and `pg-scan`
(detectors only), one agent. A service account the rules do not name sees raw values.
The server's data is never changed; what the client receives is masked, with a valid wire
protocol, in text and binary results, COPY, JSON and casts; the audit holds the counts.
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from psycopg import sql

from gateway.crypto import SecretBox
from tests.fixtures.postgres import PostgresServer
from tests.fixtures.wardgate import ADMIN_TOKEN, WARDGATE, GatewayProc, Wardgate, wait_for

pytestmark = pytest.mark.e2e

APP_PASSWORD = "mask-app-secret-Zq8"
CARD = "4111 1111 1111 1111"
CUSTOMERS = [
    # id, name, email, ssn, note, tax_id, profile
    (1, "Alice", "alice@example.com", "123-45-6789", f"paid with {CARD}", 900100200, "a"),
    (2, "Bob", "bob@example.org", "234-56-7890", "call +44 20 7946 0958", 900100300, "b"),
    (3, "Carol", "carol@example.net", None, None, None, None),
]
ORDERS = [(1, "alice@example.com"), (2, "alice@example.com"), (3, "bob@example.org")]

MASKING = [
    {
        "name": "ssn-partial",
        "match": {"users": ["admin"], "connections": ["pg-main"]},
        "columns": ["ssn"],
        "strategy": "partial",
    },
    {
        "name": "email-token",
        "match": {"users": ["admin"], "connections": ["pg-main"]},
        "columns": ["customers.email", "orders.customer_email", "tax_id"],
        "strategy": "token",
    },
    {
        "name": "pii-scan",
        "match": {"users": ["admin"]},
        "detectors": ["email", "card", "phone", "iban"],
        "strategy": "redact",
    },
]
ROLES = [
    {
        "name": "trusted",
        "groups": ["trusted"],
        "grants": [{"connection": "pg-*", "access": "admin"}],
    }
]


@dataclass
class Stack:
    wg: Wardgate
    gw: GatewayProc
    db: PostgresServer
    clear_key: str

    def conninfo(self, dbname: str = "pg-main", *, clear: bool = False) -> str:
        if clear:
            with self.gw.api(self.clear_key) as api:
                r = api.post("/v1/credentials/connection", json={"connection": dbname})
                assert r.status_code == 200, r.text
                minted = r.json()
            user, password = minted["user"], minted["token"]
        else:
            user, password = "admin", ADMIN_TOKEN
        return (
            f"host=127.0.0.1 port={self.gw.public_port} dbname={dbname} user={user} "
            f"password={password} sslmode=verify-full sslrootcert={self.gw.ca_path}"
        )

    def psql(self, *args: str, dbname: str = "pg-main") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["psql", self.conninfo(dbname), "-X", "-At", "-F", "|", *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def masked_counts(self) -> Counter[tuple[str, str]]:
        counts: Counter[tuple[str, str]] = Counter()
        for event in self.gw.audit("pg.masked") + self.gw.audit("pg.result"):
            for c in event["data"].get("counts", event["data"].get("masked", [])):
                counts[(c["column"], c["detector"])] += c["count"]
        return counts


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, postgres_server: PostgresServer
) -> Iterator[Stack]:
    with postgres_server.connect() as admin:
        admin.execute(sql.SQL("drop database if exists maskapp"))
        admin.execute(sql.SQL("drop role if exists mask_app"))
        admin.execute(
            sql.SQL("create role mask_app login password {}").format(sql.Literal(APP_PASSWORD))
        )
        admin.execute(sql.SQL("create database maskapp owner mask_app"))
    db = dataclasses.replace(postgres_server, dbname="maskapp")
    with psycopg.connect(db.dsn(), autocommit=True) as conn:
        conn.execute("set role mask_app")
        conn.execute(
            "create table customers (id int primary key, name text, email text, ssn text,"
            " note text, tax_id bigint, profile jsonb)"
        )
        conn.execute("create table orders (id int primary key, customer_email text)")
        for cid, name, email, ssn, note, tax, tag in CUSTOMERS:
            profile = None if tag is None else json.dumps({"tag": tag, "contact": email})
            conn.execute(
                "insert into customers values (%s, %s, %s, %s, %s, %s, %s)",
                (cid, name, email, ssn, note, tax, profile),
            )
        for row in ORDERS:
            conn.execute("insert into orders values (%s, %s)", row)
    wg = Wardgate(tmp_path_factory.mktemp("masking"))
    try:
        gw = wg.gateway(
            secret_key=SecretBox.generate_key(), policy={"masking": MASKING}, roles=ROLES
        )
        wg.agent(gw, gw.create_agent("default"), wait="default")
        for name in ("pg-main", "pg-scan"):
            gw.create_connection(
                name=name,
                type="postgres",
                host="127.0.0.1",
                port=postgres_server.port,
                database="maskapp",
                username="mask_app",
                password=APP_PASSWORD,
            )
        with gw.api() as api:
            made = api.post("/v1/service-accounts", json={"name": "clear", "groups": ["trusted"]})
            assert made.status_code == 201, made.text
            issued = api.post("/v1/service-accounts/clear/keys", json={"scopes": ["pg-*"]})
            assert issued.status_code == 201, issued.text
        yield Stack(wg, gw, db, issued.json()["key"])
    finally:
        wg.close()


def _customers(conninfo: str, *, binary: bool) -> list[tuple[Any, ...]]:
    with psycopg.connect(conninfo, autocommit=True) as conn, conn.cursor(binary=binary) as cur:
        cur.execute("select id, name, email, ssn, note, tax_id, profile from customers order by id")
        return cur.fetchall()


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
def test_psycopg_results_are_masked_in_text_and_binary(stack: Stack, binary: bool) -> None:
    rows = _customers(stack.conninfo(), binary=binary)
    assert [r[0] for r in rows] == [1, 2, 3]
    assert [r[1] for r in rows] == ["Alice", "Bob", "Carol"]  # untouched column
    emails = [r[2] for r in rows]
    assert all(e.startswith("tok_") and len(e) == 20 for e in emails), emails
    assert len(set(emails)) == 3
    assert [r[3] for r in rows] == ["****6789", "****7890", None]  # partial; NULL stays NULL
    assert rows[0][4] == "paid with [card]"
    assert rows[1][4] == "call [phone]"
    assert rows[2][4] is None
    # tax_id (bigint) gets a keyed integer: type-valid, not the value
    assert isinstance(rows[0][5], int) and rows[0][5] not in (900100200, 900100300)
    assert rows[2][5] is None
    # jsonb parsed by psycopg: still valid JSON, the email inside it redacted
    assert rows[0][6] == {"tag": "a", "contact": "[email]"}
    assert rows[2][6] is None
    # The same value masks alike in text and binary results: tokens are per connection.
    other = _customers(stack.conninfo(), binary=not binary)
    assert [r[2] for r in other] == emails
    assert [r[5] for r in other] == [r[5] for r in rows]


def test_a_user_the_rules_do_not_name_sees_raw_values(stack: Stack) -> None:
    rows = _customers(stack.conninfo(clear=True), binary=False)
    assert [(r[2], r[3], r[5]) for r in rows] == [(c[2], c[3], c[5]) for c in CUSTOMERS]
    assert rows[0][4] == f"paid with {CARD}"


def test_psql_text_results_values_in_json_and_casts(stack: Stack) -> None:
    out = stack.psql(
        "-c",
        "select upper(email), email::varchar(40), email as e, "
        "json_build_object('e', email, 'n', 4111111111111111)::text, "
        "array_agg(email) over ()::text, jsonb_build_object('e', email, 'n', 4111111111111111), "
        "json_build_object('e', note, 'n', 4111111111111111)::text, array_agg(note) over ()::text, "
        "jsonb_build_object('e', note) "
        "from customers where id = 1",
    )
    assert out.returncode == 0, out.stderr
    upper, cast, alias, built, arr, jsonb, note_built, note_arr, note_jsonb = (
        out.stdout.strip().split("|")
    )
    # Derived from a masked column (lineage): masked whole, whatever the rule's strategy.
    assert upper == cast == built == arr == "[redacted]"
    assert json.loads(jsonb) == "[redacted]"  # still valid JSON
    assert alias.startswith("tok_")  # a table column under an alias: the catalog knows it
    # Not derived from a masked column: the detectors see the value, syntax kept.
    assert json.loads(note_built) == {"e": "paid with [card]", "n": "[card]"}
    assert note_arr == '{"paid with [card]"}'  # quoted: still a valid array literal
    assert json.loads(note_jsonb) == {"e": "paid with [card]"}
    assert "alice" not in out.stdout.lower()


def test_token_masking_keeps_joins_and_group_by(stack: Stack) -> None:
    query = (
        "select o.customer_email, c.email, count(*) from orders o"
        " join customers c on c.email = o.customer_email group by 1, 2 order by 3 desc"
    )
    with psycopg.connect(stack.conninfo(), autocommit=True) as conn:
        masked = conn.execute(query).fetchall()
        tokens: dict[int, str] = dict(conn.execute("select id, email from customers").fetchall())
        order_tokens = [r[0] for r in conn.execute("select customer_email from orders order by id")]
    with psycopg.connect(stack.conninfo(clear=True), autocommit=True) as conn:
        raw = conn.execute(query).fetchall()
    assert [r[2] for r in masked] == [r[2] for r in raw] == [2, 1]
    assert all(r[0] == r[1] for r in masked)  # both sides of the join mask alike
    # Client-side join of two separate results still works on tokens.
    assert order_tokens == [tokens[1], tokens[1], tokens[2]]


def test_copy_to_stdout_is_scanned_by_detectors(stack: Stack) -> None:
    out = stack.psql(
        "-c",
        "copy (select id, email, note from customers order by id) to stdout with (format csv)",
        dbname="pg-scan",
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "1,[email],paid with [card]",
        "2,[email],call [phone]",
        "3,[email],",
    ]
    text = stack.psql("-c", r"\copy customers (email, ssn) to stdout", dbname="pg-scan")
    assert text.stdout.splitlines()[2] == "[email]\t\\N", text
    with (
        psycopg.connect(stack.conninfo("pg-scan"), autocommit=True) as conn,
        conn.cursor() as cur,
        cur.copy(
            "copy (select id, email from customers order by id) to stdout (format binary)"
        ) as copy,
    ):
        copy.set_types(["int4", "text"])
        rows = list(copy.rows())
    assert rows == [(1, None), (2, None), (3, None)]  # a binary field with a hit is nulled


def test_copy_under_column_rules_is_masked_by_column_and_unread_options_refused(
    stack: Stack,
) -> None:
    # Lineage names COPY's columns: masked per column (was refused before lineage).
    out = stack.psql("-c", "copy customers (id, email, ssn) to stdout", "-c", "select 42")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert [line.split("\t")[0] for line in lines[:3]] == ["1", "2", "3"]
    assert lines[0].split("\t")[1].startswith("tok_") and lines[0].split("\t")[2] == "****6789"
    assert "alice" not in out.stdout
    assert lines[-1] == "42"
    # Binary COPY names no types: a masked column's fields (derived or not) come as NULL.
    with (
        psycopg.connect(stack.conninfo(), autocommit=True) as conn,
        conn.cursor() as cur,
        cur.copy(
            "copy (select id, upper(email), ssn, name from customers order by id) "
            "to stdout (format binary)"
        ) as copy,
    ):
        copy.set_types(["int4", "text", "text", "text"])
        rows = list(copy.rows())
    assert [r[:3] for r in rows] == [(1, None, None), (2, None, None), (3, None, None)]
    assert [r[3] for r in rows] == [c[1] for c in CUSTOMERS]  # an unmasked column passes
    # Options lineage does not read (a custom quote): refused, and the session goes on.
    out = stack.psql(
        "-c",
        "copy (select upper(email) from customers) to stdout (format csv, quote '|')",
        "-c",
        "select 42",
    )
    assert "COPY TO cannot apply column masking rules" in out.stderr, out
    assert "alice" not in out.stdout.lower()
    assert out.stdout.strip().splitlines()[-1] == "42"


def test_server_data_is_unchanged_and_counts_are_audited(stack: Stack) -> None:
    with psycopg.connect(stack.conninfo(), autocommit=True) as conn:
        conn.execute("select ssn, email from customers").fetchall()
    with psycopg.connect(stack.db.dsn(), autocommit=True) as conn:
        emails = [r[0] for r in conn.execute("select email from customers order by id")]
    assert emails == [c[2] for c in CUSTOMERS]

    def recorded() -> bool:
        counts = stack.masked_counts()
        return counts[("customers.email", "column")] > 0 and counts[("customers.ssn", "column")] > 0

    wait_for(recorded, "masking counts in the audit", timeout=10)
    opened = [e for e in stack.gw.audit("session.open") if e["data"].get("masking")]
    assert opened[-1]["data"]["masking"] == ["ssn-partial", "email-token", "pii-scan"]
    # The agent's counts ride in the Data that ends the statement: they are in its pg.result.
    events = [e for e in stack.gw.audit("pg.result") if e["data"].get("masked")]
    assert events
    assert all("alice" not in json.dumps(e) for e in events)
    session_id = events[-1]["session"]
    assert not [e for e in stack.gw.audit("pg.masked") if e["session"] == session_id]
    with stack.gw.api() as api:
        shown = api.get(f"/v1/sessions/{session_id}").json()
    assert {"column": "customers.email", "detector": "column", "count": 3} in shown["masked"]
    listed = subprocess.run(
        [*WARDGATE, "sessions", "show", session_id],
        env=stack.gw.client_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert re.search(r"^\s+customers\.email\s+column\s+3$", listed.stdout, re.M), listed.stdout


def test_prepared_statements_and_server_side_cursors_are_masked(stack: Stack) -> None:
    with psycopg.connect(stack.conninfo(), autocommit=False) as conn:
        for _ in range(3):
            row = conn.execute(
                "select email, ssn, note from customers where id = %s", (1,), prepare=True
            ).fetchone()
            assert row is not None
            assert row[0].startswith("tok_") and row[1] == "****6789"
            assert row[2] == "paid with [card]"
        with conn.cursor("named", binary=True) as cur:
            cur.itersize = 1
            cur.execute("select email, tax_id from customers order by id")
            fetched = list(cur)
        assert [r[0][:4] for r in fetched] == ["tok_"] * 3
        assert fetched[0][1] not in (900100200, None)


def test_policy_explain_shows_the_masking_rules_that_apply(stack: Stack) -> None:
    def explain(connection: str) -> subprocess.CompletedProcess[str]:
        return stack.wg.cli(
            stack.gw,
            "policy",
            "explain",
            "--user",
            "admin",
            "--connection",
            connection,
            "select email from customers",
        )

    main = explain("pg-main")
    assert main.returncode == 0, main.stderr
    assert "masking: ssn-partial (columns ssn) strategy=partial" in main.stdout
    assert (
        "masking: email-token (columns customers.email,orders.customer_email,tax_id) "
        "strategy=token" in main.stdout
    )
    assert "masking: pii-scan (detectors email,card,phone,iban) strategy=redact" in main.stdout
    scan = explain("pg-scan")
    assert scan.returncode == 0, scan.stderr
    assert [line for line in scan.stdout.splitlines() if line.startswith("masking:")] == [
        "masking: pii-scan (detectors email,card,phone,iban) strategy=redact"
    ]
    with stack.gw.api() as api:
        other = api.post(
            "/v1/policy/explain",
            json={"user": "someone", "connection": "pg-main", "sql": "select 1"},
        )
    assert other.status_code == 200, other.text
    assert other.json()["masking"] == []
