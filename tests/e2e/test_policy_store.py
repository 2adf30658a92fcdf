"""Policy versions in the store, end to end: `wardgate apply -f`, history, rollback, replicas.

A gateway whose config carries a policy seeds version 1; a file applied with the CLI makes
version 2, enforced on the next statement of sessions already open and on new ones, without
a restart; applying it again changes nothing; an invalid document is refused and changes
nothing; a rollback brings an old document back as a new version. Two replicas sharing a
PostgreSQL store: a version applied through one is enforced on the other.
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
import yaml
from psycopg import sql

from gateway.crypto import SecretBox
from tests.fixtures.postgres import PostgresServer
from tests.fixtures.wardgate import ADMIN_TOKEN, GatewayProc, Wardgate, wait_for

pytestmark = pytest.mark.e2e

APP_PASSWORD = "pstore-app-secret-Qz8"

SEED = {
    "rules": [
        {
            "name": "no-drop",
            "effect": "deny",
            "message": "no DDL here",
            "match": {"kinds": ["ddl"]},
        }
    ]
}
NO_DELETE = {
    "rules": [
        *SEED["rules"],
        {
            "name": "no-delete",
            "effect": "deny",
            "message": "deletes need a ticket",
            "match": {"kinds": ["write"], "tables": ["items"]},
        },
    ]
}


def _database(server: PostgresServer, name: str) -> PostgresServer:
    with server.connect() as admin:
        admin.execute(sql.SQL("drop database if exists {}").format(sql.Identifier(name)))
        exists = admin.execute("select 1 from pg_roles where rolname = 'pstore_app'").fetchone()
        if exists is None:
            admin.execute(
                sql.SQL("create role pstore_app login password {}").format(
                    sql.Literal(APP_PASSWORD)
                )
            )
        admin.execute(sql.SQL("create database {} owner pstore_app").format(sql.Identifier(name)))
    db = dataclasses.replace(server, dbname=name)
    with psycopg.connect(db.dsn(), autocommit=True) as conn:
        conn.execute("set role pstore_app")
        conn.execute("create table items (id int primary key)")
        conn.execute("insert into items select generate_series(1, 3)")
    return db


def _connection(gw: GatewayProc, server: PostgresServer, database: str) -> None:
    gw.create_connection(
        name="pg-app",
        type="postgres",
        host="127.0.0.1",
        port=server.port,
        database=database,
        username="pstore_app",
        password=APP_PASSWORD,
    )


def conninfo(gw: GatewayProc) -> str:
    return (
        f"host=127.0.0.1 port={gw.public_port} dbname=pg-app user=admin "
        f"password={ADMIN_TOKEN} sslmode=verify-full sslrootcert={gw.ca_path}"
    )


@dataclass
class Stack:
    wg: Wardgate
    gw: GatewayProc
    db: PostgresServer
    tmp: Path

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.wg.cli(self.gw, *args)

    def apply(self, doc: object, name: str = "policy.yaml") -> subprocess.CompletedProcess[str]:
        path = self.tmp / name
        path.write_text(yaml.safe_dump(doc))
        return self.cli("apply", "-f", str(path))

    def count(self) -> int:
        with psycopg.connect(self.db.dsn()) as conn:
            row = conn.execute("select count(*) from items").fetchone()
            assert row is not None
            return int(row[0])


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, postgres_server: PostgresServer
) -> Iterator[Stack]:
    db = _database(postgres_server, "pstoreapp")
    tmp = tmp_path_factory.mktemp("pstore")
    wg = Wardgate(tmp)
    try:
        gw = wg.gateway(secret_key=SecretBox.generate_key(), policy=SEED)
        wg.agent(gw, gw.create_agent("default"), wait="default")
        _connection(gw, postgres_server, "pstoreapp")
        yield Stack(wg, gw, db, tmp)
    finally:
        wg.close()


def test_apply_history_rollback_and_enforcement_without_restart(stack: Stack) -> None:
    history = stack.cli("policy", "history")
    assert history.returncode == 0, history.stderr
    assert history.stdout.splitlines()[0].split() == [
        "VERSION",
        "APPLIED",
        "BY",
        "SHA256",
        "COMMENT",
    ]
    assert re.match(r"\s*1\s.*\sconfig\s", history.stdout.splitlines()[1])

    with psycopg.connect(conninfo(stack.gw), autocommit=True) as open_session:
        open_session.execute("delete from items where id = 3")  # allowed by version 1
        applied = stack.apply({"policy": NO_DELETE})
        assert applied.returncode == 0, applied.stderr
        assert "policy version 2 created" in applied.stdout
        # The session that was open switches at its next statement.
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="deletes need a ticket"):
            open_session.execute("delete from items where id = %s", (2,))
        assert open_session.execute("select count(*) from items").fetchone() == (2,)
    again = stack.apply({"policy": NO_DELETE})
    assert "policy version 2 unchanged" in again.stdout, again.stderr

    # A new session, simple protocol: refused in order, the session goes on.
    out = subprocess.run(
        ["psql", conninfo(stack.gw), "-X", "-At", "-c", "delete from items", "-c", "select 7"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.stdout.split() == ["7"] and "deletes need a ticket" in out.stderr, out
    assert stack.count() == 2
    statements = [
        e["data"] for e in stack.gw.audit("pg.statement") if e["data"]["text"] == "select 7"
    ]
    assert statements[-1]["policy_version"] == 2
    refused = [e["data"] for e in stack.gw.audit("pg.refused") if e["data"].get("text")]
    assert refused[-1]["policy_version"] == 2 and refused[-1]["rules"] == ["no-delete"]

    shown = stack.cli("policy", "show")
    assert shown.returncode == 0, shown.stderr
    assert "# version 2" in shown.stdout and "no-delete" in shown.stdout
    old = stack.cli("policy", "show", "--version", "1")
    assert "no-delete" not in old.stdout and "no-drop" in old.stdout

    rolled = stack.cli("policy", "rollback", "1")
    assert rolled.returncode == 0, rolled.stderr
    assert "policy version 3 created (from version 1)" in rolled.stdout
    with psycopg.connect(conninfo(stack.gw), autocommit=True) as conn:
        conn.execute("delete from items where id = 2")
    assert stack.count() == 1
    history = stack.cli("policy", "history")
    assert [line.split()[0] for line in history.stdout.splitlines()[1:]] == ["1", "2", "3"]
    assert "rollback to version 1" in history.stdout
    explain = stack.cli(
        "policy", "explain", "--user", "admin", "--connection", "pg-app", "delete from items"
    )
    assert "decision: allow" in explain.stdout, explain.stdout
    applied_events = stack.gw.audit("policy.applied")
    assert [e["data"]["version"] for e in applied_events] == [2, 3]


def test_an_invalid_document_is_refused_and_changes_nothing(stack: Stack) -> None:
    before = stack.cli("policy", "history", "-o", "json").stdout
    bad = stack.apply(
        {"policy": {"rules": [{"name": "x", "effect": "perhaps"}], "budgets": [{"name": "b"}]}},
        name="bad.yaml",
    )
    assert bad.returncode != 0
    assert "gateway answered 422" in bad.stderr and "invalid policy" in bad.stderr
    assert "rules.0.effect" in bad.stderr and "rows_per_day and/or bytes_per_day" in bad.stderr
    with stack.gw.api() as api:
        r = api.put("/v1/policy", json={"policy": {"guarded_connections": "pg-*"}})
        assert r.status_code == 422 and "guarded_connections" in r.json()["detail"]
        assert api.get("/v1/policy/versions/99").status_code == 404
        assert api.post("/v1/policy/versions/99/rollback").status_code == 404
    assert stack.cli("policy", "history", "-o", "json").stdout == before


def test_a_replica_enforces_a_version_applied_through_another(
    wardgate: Wardgate, postgres_server: PostgresServer, postgres_db: PostgresServer
) -> None:
    _database(postgres_server, "pstorerep")
    shared = {
        "store": postgres_db.url(),
        "secret_key": SecretBox.generate_key(),
        "policy_check_interval": 0.5,
    }
    first = wardgate.gateway(**shared)
    second = wardgate.gateway(**shared)
    wardgate.agent(first, first.create_agent("default"), wait="default")
    _connection(first, postgres_server, "pstorerep")

    with psycopg.connect(conninfo(first), autocommit=True) as open_session:
        with second.api() as api:
            r = api.put("/v1/policy", json={"policy": NO_DELETE, "comment": "via second"})
            assert r.status_code == 200, r.text
            assert r.json()["version"] == 1 and r.json()["status"] == "created"

        # A new session on the first replica judges with it at once ...
        with (
            psycopg.connect(conninfo(first), autocommit=True) as fresh,
            pytest.raises(psycopg.errors.InsufficientPrivilege, match="deletes need a ticket"),
        ):
            fresh.execute("delete from items")

        # ... and the session already open there from its watcher's next check on.
        def refused() -> bool:
            try:
                open_session.execute("delete from items where id = -1")
            except psycopg.errors.InsufficientPrivilege:
                return True
            return False

        wait_for(refused, "the open session to switch to version 1", timeout=15)
    with first.api() as api:
        shown = api.get("/v1/policy").json()
    assert shown["version"] == 1 and shown["comment"] == "via second"
    assert shown["applied_by"] == "admin"
