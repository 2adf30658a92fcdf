"""What writes, end to end: writing built-ins and volatile user functions on a guarded connection.

A real PostgreSQL database with a schema `app`: `app.bump()` (plpgsql, VOLATILE, inserts a
row) and `app.pure(int)` (SQL, IMMUTABLE). A real gateway and agent; connections guarded by
an allow-reads rule. The parser alone calls `select app.bump()` a read; the gateway asks the
server's catalog (a second connection through the agent) and refuses it, while built-ins
and IMMUTABLE functions pass, a rule naming the function lets it through, and a change of
volatility (in another session, or by ALTER FUNCTION in this one) changes the verdict.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import pytest
from psycopg import sql

from gateway.crypto import SecretBox
from tests.fixtures.postgres import PostgresServer
from tests.fixtures.wardgate import ADMIN_TOKEN, GatewayProc, Wardgate

pytestmark = pytest.mark.e2e

LIMITED_PASSWORD = "fn-limited-secret-Qz7"
READS = {"kinds": ["read"]}
POLICY = {
    "rules": [
        {"name": "reads", "effect": "allow", "match": READS},
        {
            "name": "bump-counts-as-read",
            "effect": "allow",
            "match": {"connections": ["pg-bump"], **READS, "volatile_functions": ["app.bump"]},
        },
        {"name": "ddl", "effect": "allow", "match": {"connections": ["pg-ddl"], "kinds": ["ddl"]}},
    ],
    "guarded_connections": ["pg-*"],
}
SETUP = """
create schema app;
create table app.hits (id serial primary key, at timestamptz default now());
create sequence app.seq;
create function app.bump() returns int language plpgsql volatile as
  $$ begin insert into app.hits default values; return (select count(*) from app.hits); end $$;
create function app.pure(x int) returns int language sql immutable as 'select x * 2';
create role fn_limited login connection limit 1 password {password};
grant usage on schema app to fn_limited;
"""


@dataclass
class Stack:
    wg: Wardgate
    gw: GatewayProc
    db: PostgresServer

    def conninfo(self, dbname: str) -> str:
        return (
            f"host=127.0.0.1 port={self.gw.public_port} dbname={dbname} user=admin "
            f"password={ADMIN_TOKEN} sslmode=verify-full sslrootcert={self.gw.ca_path}"
        )

    def connect(self, dbname: str = "pg-guarded") -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(self.conninfo(dbname), autocommit=True)

    def psql(self, statement: str, dbname: str = "pg-guarded") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["psql", self.conninfo(dbname), "-X", "-At", "-c", statement],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def hits(self) -> int:
        with self.db.connect() as conn:
            row = conn.execute("select count(*) from app.hits").fetchone()
        assert row is not None
        return int(row[0])

    def direct(self, statement: str) -> None:
        with self.db.connect() as conn:
            conn.execute(statement.encode())


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, postgres_server: PostgresServer
) -> Iterator[Stack]:
    postgres_server.drop_database("fnapp")
    with postgres_server.connect() as admin:
        admin.execute(sql.SQL("drop role if exists fn_limited"))
    db = postgres_server.create_database("fnapp")
    with db.connect() as conn:
        conn.execute(sql.SQL(SETUP).format(password=sql.Literal(LIMITED_PASSWORD)))
    wg = Wardgate(tmp_path_factory.mktemp("policy-functions"))
    try:
        gw = wg.gateway(secret_key=SecretBox.generate_key(), policy=POLICY)
        wg.agent(gw, gw.create_agent("default"), wait="default")
        for name in ("pg-guarded", "pg-bump", "pg-ddl"):
            gw.create_connection(**db.connection_spec(name))
        gw.create_connection(
            **{
                **db.connection_spec("pg-limited"),
                "username": "fn_limited",
                "password": LIMITED_PASSWORD,
            }
        )
        yield Stack(wg, gw, db)
    finally:
        wg.close()
        postgres_server.drop_database("fnapp")
        with postgres_server.connect() as admin:
            admin.execute(sql.SQL("drop role if exists fn_limited"))


@pytest.mark.parametrize(
    "statement",
    [
        "select nextval('app.seq')",
        "select setval('app.seq', 42)",
        "select lo_from_bytea(0, '\\x41')",
        "select app.bump()",
        "select * from app.hits where id = app.bump()",
    ],
)
def test_an_allow_reads_rule_refuses_writes_the_parser_calls_reads(
    stack: Stack, statement: str
) -> None:
    before = stack.hits()
    with stack.connect() as conn:  # extended protocol: judged at Parse
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="no rule allows") as exc:
            conn.execute(statement.encode())
        assert exc.value.sqlstate == "42501"
        assert "kind=write" in str(exc.value)
        # The session goes on.
        assert conn.execute("select 1").fetchone() == (1,)
    out = stack.psql(statement)  # simple protocol
    assert out.returncode != 0
    assert "no rule allows this statement (kind=write+read" in out.stderr, out.stderr
    assert stack.hits() == before
    with stack.db.connect() as conn:
        assert conn.execute("select last_value from app.seq").fetchone() == (1,)
        assert conn.execute("select count(*) from pg_largeobject_metadata").fetchone() == (0,)


def test_built_ins_and_immutable_functions_pass(stack: Stack) -> None:
    with stack.connect() as conn:
        assert conn.execute("select lower('X')").fetchone() == ("x",)
        assert conn.execute("select app.pure(21)").fetchone() == (42,)
        assert conn.execute("select app.pure(%s), now() is not null", (2,)).fetchone() == (4, True)
    out = stack.psql("select lower('X'), app.pure(1)")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "x|2"


def test_a_rule_naming_the_function_allows_it(stack: Stack) -> None:
    before = stack.hits()
    with stack.connect("pg-bump") as conn:
        assert conn.execute("select app.bump()").fetchone() == (before + 1,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="kind=write"):
            conn.execute("select nextval('app.seq')")  # named built-ins stay writes
    assert stack.hits() == before + 1


def test_the_verdict_follows_a_change_of_volatility(stack: Stack) -> None:
    try:
        stack.direct(
            "create or replace function app.pure(x int) returns int language sql volatile "
            "as 'select x * 2'"
        )
        with (
            stack.connect() as conn,
            pytest.raises(
                psycopg.errors.InsufficientPrivilege, match=r"volatile_functions=app\.pure"
            ),
        ):
            conn.execute("select app.pure(1)")
        stack.direct(
            "create or replace function app.pure(x int) returns int language sql immutable "
            "as 'select x * 2'"
        )
        with stack.connect() as conn:
            assert conn.execute("select app.pure(1)").fetchone() == (2,)
        # Within one session: its own DDL drops what the catalog said.
        with stack.connect("pg-ddl") as conn:
            assert conn.execute("select app.pure(3)").fetchone() == (6,)
            conn.execute("alter function app.pure(int) volatile")
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match=r"app\.pure"):
                conn.execute("select app.pure(3)")
            conn.execute("alter function app.pure(int) immutable")
            assert conn.execute("select app.pure(3)").fetchone() == (6,)
    finally:
        stack.direct("alter function app.pure(int) immutable")


def test_a_lookup_that_cannot_be_made_refuses_the_statement(stack: Stack) -> None:
    # The role may hold one connection: the session's. The catalog lookup's second
    # connection is refused by the server, so the statement is refused, not let through.
    with stack.connect("pg-limited") as conn:
        assert conn.execute("select 1").fetchone() == (1,)  # calls nothing: nothing to ask
        with pytest.raises(
            psycopg.errors.InsufficientPrivilege, match="cannot be looked up in the catalog"
        ) as exc:
            conn.execute("select lower('X')")
        assert "too many connections" in str(exc.value)


def test_unqualified_names_are_resolved_on_the_sessions_search_path(stack: Stack) -> None:
    before = stack.hits()
    # Off the search path, bump() is no function the server would call: no write to refuse.
    with stack.connect() as conn, pytest.raises(psycopg.errors.UndefinedFunction):
        conn.execute("select bump()")
    # The client's startup options put app on the path; the lookup logs in with them too.
    options = "options='-c search_path=app,public'"
    with psycopg.connect(f"{stack.conninfo('pg-guarded')} {options}", autocommit=True) as conn:
        with pytest.raises(
            psycopg.errors.InsufficientPrivilege, match=r"volatile_functions=app\.bump"
        ):
            conn.execute("select bump()")
        assert conn.execute("select pure(5)").fetchone() == (10,)
    assert stack.hits() == before
