"""Guardrails end to end: a gateway configured with deny/allow rules, real psql and psycopg.

One PostgreSQL database with a `secrets` table, one gateway whose config carries the rules,
one agent. A denied statement is answered 42501 with the rule's message by the gateway (the
server never sees it), on the simple protocol (psql) and the extended one (psycopg, judged
at Parse); the session goes on; the data is unchanged; `wardgate policy explain` says why.
"""

from __future__ import annotations

import dataclasses
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import pytest
from psycopg import sql
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

from gateway.crypto import SecretBox
from tests.fixtures.postgres import PostgresServer
from tests.fixtures.wardgate import (
    ADMIN_TOKEN,
    GatewayProc,
    Wardgate,
    free_port,
    port_open,
)

pytestmark = pytest.mark.e2e

APP_PASSWORD = "policy-app-secret-Kp4"
SECRET_ROWS = [(1, "alpha"), (2, "beta")]

POLICY = {
    "rules": [
        {
            "name": "no-secret-writes",
            "effect": "deny",
            "message": "writes to secrets need a change ticket",
            "match": {"kinds": ["write", "ddl", "dcl"], "tables": ["secrets"]},
        },
        {
            "name": "no-outside-data",
            "effect": "deny",
            "message": "no access outside the data",
            "match": {"flags": ["outside_data"]},
        },
        {
            "name": "locked-reads",
            "effect": "allow",
            "match": {"connections": ["pg-locked"], "kinds": ["read", "transaction"]},
        },
    ],
    "guarded_connections": ["pg-locked", "tcp-locked"],
}


@dataclass
class Stack:
    wg: Wardgate
    gw: GatewayProc
    db: PostgresServer

    def conninfo(self, dbname: str = "pg-main") -> str:
        return (
            f"host=127.0.0.1 port={self.gw.public_port} dbname={dbname} user=admin "
            f"password={ADMIN_TOKEN} sslmode=verify-full sslrootcert={self.gw.ca_path}"
        )

    def psql(self, *args: str, dbname: str = "pg-main") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["psql", self.conninfo(dbname), "-X", "-At", *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def rows(self) -> list[tuple[int, str]]:
        """The secrets as the server holds them, read directly (not through the gateway)."""
        with psycopg.connect(self.db.dsn()) as conn:
            return [
                (int(r[0]), str(r[1])) for r in conn.execute("select * from secrets order by id")
            ]


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, postgres_server: PostgresServer
) -> Iterator[Stack]:
    with postgres_server.connect() as admin:
        admin.execute(sql.SQL("drop database if exists policyapp"))
        admin.execute(sql.SQL("drop role if exists policy_app"))
        admin.execute(
            sql.SQL("create role policy_app login password {}").format(sql.Literal(APP_PASSWORD))
        )
        admin.execute(sql.SQL("create database policyapp owner policy_app"))
    db = dataclasses.replace(postgres_server, dbname="policyapp")
    with psycopg.connect(db.dsn(), autocommit=True) as conn:
        conn.execute("set role policy_app")
        conn.execute("create table secrets (id int primary key, v text)")
        conn.execute("create table notes (id serial primary key, body text)")
        for row in SECRET_ROWS:
            conn.execute("insert into secrets values (%s, %s)", row)
    wg = Wardgate(tmp_path_factory.mktemp("policy"))
    try:
        gw = wg.gateway(secret_key=SecretBox.generate_key(), policy=POLICY)
        wg.agent(gw, gw.create_agent("default"), wait="default")
        for name in ("pg-main", "pg-locked"):
            gw.create_connection(
                name=name,
                type="postgres",
                host="127.0.0.1",
                port=postgres_server.port,
                database="policyapp",
                username="policy_app",
                password=APP_PASSWORD,
            )
        gw.create_connection(name="tcp-locked", type="tcp", host="127.0.0.1", port=9)
        yield Stack(wg, gw, db)
    finally:
        wg.close()


def test_psql_denied_write_is_refused_in_order_and_the_session_goes_on(stack: Stack) -> None:
    out = stack.psql(
        "-c",
        "select count(*) from secrets",
        "-c",
        "delete from secrets where id = 1",
        "-c",
        "select 2; update secrets set v = 'x' where id = 2",
        "-c",
        "select 3",
    )
    assert out.stdout.split() == ["2", "3"], out
    assert "writes to secrets need a change ticket (rule 'no-secret-writes')" in out.stderr
    assert "statement 2 of 2" in out.stderr
    assert stack.rows() == SECRET_ROWS
    with stack.gw.api() as api:
        events = api.get("/v1/audit", params={"kind": "pg.refused", "text": "secrets"}).json()
    refused = {e["data"]["text"]: e["data"] for e in events}
    assert refused["delete from secrets where id = 1"]["rules"] == ["no-secret-writes"]


def test_psql_verbose_error_carries_42501(stack: Stack) -> None:
    out = stack.psql("-v", "VERBOSITY=verbose", "-c", "copy secrets to program 'id'")
    assert out.returncode != 0
    assert "42501" in out.stderr and "no access outside the data" in out.stderr


def test_psycopg_extended_protocol_is_judged_at_parse(stack: Stack) -> None:
    with psycopg.connect(stack.conninfo(), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="no-secret-writes") as exc:
            conn.execute("update secrets set v = %s where id = %s", ("pwned", 1))
        assert exc.value.sqlstate == "42501"
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="outside the data"):
            conn.execute("select pg_read_file(%s)", ("/etc/passwd",))
        # Allowed statements run on the same session, reads of secrets included.
        assert conn.execute("select v from secrets where id = %s", (1,)).fetchone() == ("alpha",)
        conn.execute("insert into notes (body) values (%s)", ("allowed write",))
        assert conn.execute("select count(*) from notes").fetchone() == (1,)
    # Mid-pipeline the server already holds part of the batch: the session ends, closed,
    # and the client reads why (the gateway lingers until it has, rather than reset).
    with (
        psycopg.connect(stack.conninfo(), autocommit=True) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege, match="no-secret-writes") as exc,
        conn.pipeline(),
    ):
        conn.execute("select 1")
        conn.execute("delete from secrets where id = %s", (2,))
    assert exc.value.sqlstate == "42501"
    assert conn.closed
    # A client that waits for results mid-batch (a Flush, no Sync) gets the session's end.
    with (
        psycopg.connect(stack.conninfo(), autocommit=True) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege, match="session ended: policy:"),
        conn.pipeline(),
    ):
        first = conn.execute("select 1")
        conn.execute("delete from secrets where id = %s", (3,))
        first.fetchone()
    assert stack.rows() == SECRET_ROWS


def test_a_guarded_connection_allows_only_what_a_rule_allows(stack: Stack) -> None:
    ok = stack.psql("-c", "select count(*) from notes", dbname="pg-locked")
    assert ok.returncode == 0, ok.stderr
    denied = stack.psql("-c", "insert into notes (body) values ('x')", dbname="pg-locked")
    assert denied.returncode != 0
    assert "no rule allows this statement" in denied.stderr


def test_a_guarded_tcp_connection_is_refused_since_nothing_there_can_be_judged(
    stack: Stack,
) -> None:
    # `wardgate tcp` asks first and refuses before it listens.
    port = free_port()
    cli = stack.wg.cli(stack.gw, "tcp", "tcp-locked", "--listen", f"127.0.0.1:{port}")
    assert cli.returncode == 1 and "Traceback" not in cli.stderr
    assert "you may not use connection 'tcp-locked': policy: " in cli.stderr
    assert "is guarded" in cli.stderr and not port_open(port)
    # A client that does not ask is refused at the session, and the refusal is audited.
    ca = ssl.create_default_context(cafile=str(stack.gw.ca_path))
    url = stack.gw.url.replace("https://", "wss://") + "/v1/connections/tcp-locked/tcp"
    auth = {"Authorization": f"Bearer {stack.gw.token}"}
    with (
        ws_connect(url, ssl=ca, additional_headers=auth, open_timeout=30) as ws,
        pytest.raises(ConnectionClosed) as closed,
    ):
        ws.recv(timeout=30)
    assert closed.value.rcvd is not None and "is guarded" in closed.value.rcvd.reason
    refused = [
        e for e in stack.gw.audit("session.refused") if e["data"].get("connection") == "tcp-locked"
    ]
    assert refused and refused[-1]["data"]["reason"].startswith("policy: ")


def test_wardgate_policy_explain(stack: Stack) -> None:
    deny = stack.wg.cli(
        stack.gw,
        "policy",
        "explain",
        "--user",
        "admin",
        "--connection",
        "pg-main",
        "select 1; DELETE /* x */ FROM public.secrets",
    )
    assert deny.returncode == 0, deny.stderr
    assert "decision: deny" in deny.stdout
    assert "rules: no-secret-writes" in deny.stdout
    assert "statement 2: deny [no-secret-writes]" in deny.stdout
    assert "tables=public.secrets" in deny.stdout
    assert "sql: DELETE /* x */ FROM public.secrets" in deny.stdout
    allow = stack.wg.cli(
        stack.gw,
        "policy",
        "explain",
        "--user",
        "bob",
        "--group",
        "dev",
        "--connection",
        "pg-locked",
        "select * from secrets",
    )
    assert allow.returncode == 0, allow.stderr
    assert "locked-reads" in allow.stdout and "guarded=yes" in allow.stdout
    # bob has no role: the explanation says so before any rule.
    assert "decision: deny" in allow.stdout and "no access" in allow.stdout
    with stack.gw.api() as api:
        r = api.post(
            "/v1/policy/explain",
            json={"user": "admin", "connection": "pg-locked", "sql": "select * from secrets"},
        )
    assert r.status_code == 200, r.text
    assert r.json()["decision"] == "allow" and r.json()["rules"] == ["locked-reads"]
