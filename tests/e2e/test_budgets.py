"""Exfiltration budgets end to end: real PostgreSQL, gateway and agent processes, psql/psycopg.

A rows budget for `admin` on `pg-rows` stops a 50,000-row result mid-stream (the client gets
53400 naming the budget, after exactly the rows the budget allowed), refuses the next
statements in order while the session keeps answering, and leaves other users and other
connections alone; the usage survives a gateway restart. A bytes budget on `pg-bytes` stops
a wide result the same way. A budget with `on_exceed: review` stops a result that crosses it,
then holds the next statement until another person approves it with the CLI (it then runs in
full), and asks again for the one after (denied: 53400).
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from psycopg import sql

from gateway.crypto import SecretBox
from tests.fixtures.postgres import PostgresServer
from tests.fixtures.wardgate import ADMIN_TOKEN, GatewayProc, Wardgate, wait_for

pytestmark = pytest.mark.e2e

APP_PASSWORD = "budget-app-secret-Wm5"
BIG_ROWS = 50_000
PAD = 100
ROWS_LIMIT = 1000
BYTES_LIMIT = 300_000

POLICY = {
    "budgets": [
        {
            "name": "admin-rows",
            "match": {"users": ["admin"], "connections": ["pg-rows"]},
            "rows_per_day": ROWS_LIMIT,
        },
        {
            "name": "admin-bytes",
            "match": {"users": ["admin"], "connections": ["pg-bytes"]},
            "bytes_per_day": BYTES_LIMIT,
        },
        {
            "name": "admin-copy",
            "match": {"users": ["admin"], "connections": ["pg-copy"]},
            "bytes_per_day": BYTES_LIMIT,
        },
    ]
}
ROLES = [
    {
        "name": "analysts",
        "groups": ["analysts"],
        "grants": [{"connection": "pg-*", "access": "read-only"}],
    }
]


@dataclass
class Stack:
    wg: Wardgate
    gw: GatewayProc

    def conninfo(self, dbname: str, user: str = "admin", password: str = ADMIN_TOKEN) -> str:
        return (
            f"host=127.0.0.1 port={self.gw.public_port} dbname={dbname} user={user} "
            f"password={password} sslmode=verify-full sslrootcert={self.gw.ca_path}"
        )

    def psql(self, dbname: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["psql", self.conninfo(dbname), "-X", "-At", "-v", "VERBOSITY=verbose", *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def result_of(self, text: str) -> dict[str, Any]:
        """The pg.result of the last statement with this text (written after the answer)."""
        seqs = [e["seq"] for e in self.gw.audit("pg.statement") if e["data"]["text"] == text]
        assert seqs, f"no statement {text!r}"
        found: list[dict[str, Any]] = []

        def recorded() -> bool:
            found[:] = [
                e["data"]
                for e in self.gw.audit("pg.result")
                if e["data"].get("statement_seq") == seqs[-1]
            ]
            return bool(found)

        wait_for(recorded, f"the result of {text!r} to be recorded")
        return found[-1]

    def usage(self, budget: str) -> dict[str, Any]:
        with self.gw.api() as api:
            rows = api.get("/v1/budgets/usage", params={"user": "admin"}).json()
        return next(r for r in rows if r["budget"] == budget)


@pytest.fixture(scope="module")
def budget_db(postgres_server: PostgresServer) -> PostgresServer:
    """The `budgetapp` database with a `big` table of BIG_ROWS rows."""
    with postgres_server.connect() as admin:
        admin.execute(sql.SQL("drop database if exists budgetapp"))
        admin.execute(sql.SQL("drop role if exists budget_app"))
        admin.execute(
            sql.SQL("create role budget_app login password {}").format(sql.Literal(APP_PASSWORD))
        )
        admin.execute(sql.SQL("create database budgetapp owner budget_app"))
    db = dataclasses.replace(postgres_server, dbname="budgetapp")
    with psycopg.connect(db.dsn(), autocommit=True) as conn:
        conn.execute("set role budget_app")
        conn.execute("create table big (id int primary key, pad text)")
        conn.execute(
            "insert into big select i, repeat('x', %s) from generate_series(1, %s) i",
            (PAD, BIG_ROWS),
        )
    return db


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory,
    postgres_server: PostgresServer,
    budget_db: PostgresServer,
) -> Iterator[Stack]:
    wg = Wardgate(tmp_path_factory.mktemp("budgets"))
    try:
        gw = wg.gateway(secret_key=SecretBox.generate_key(), policy=POLICY, roles=ROLES)
        wg.agent(gw, gw.create_agent("default"), wait="default")
        for name in ("pg-rows", "pg-bytes", "pg-copy", "pg-free"):
            gw.create_connection(
                name=name,
                type="postgres",
                host="127.0.0.1",
                port=postgres_server.port,
                database="budgetapp",
                username="budget_app",
                password=APP_PASSWORD,
            )
        yield Stack(wg, gw)
    finally:
        wg.close()


def _analyst_conninfo(stack: Stack) -> str:
    with stack.gw.api() as api:
        made = api.post("/v1/service-accounts", json={"name": "analyst", "groups": ["analysts"]})
        assert made.status_code == 201, made.text
        key = api.post("/v1/service-accounts/analyst/keys", json={"scopes": ["pg-rows"]}).json()
    with stack.gw.api(key["key"]) as api:
        minted = api.post("/v1/credentials/connection", json={"connection": "pg-rows"}).json()
    return stack.conninfo("pg-rows", user="analyst", password=minted["token"])


def test_a_rows_budget_stops_a_result_and_refuses_what_follows(stack: Stack) -> None:
    with psycopg.connect(stack.conninfo("pg-rows"), autocommit=True) as conn:
        assert len(conn.execute("select * from big limit 600").fetchall()) == 600
        prepared = "select id from big where id = %s"
        assert conn.execute(prepared, (1,), prepare=True).fetchall() == [(1,)]
        with pytest.raises(psycopg.errors.ConfigurationLimitExceeded, match="admin-rows") as exc:
            conn.execute("select * from big").fetchall()
        assert exc.value.sqlstate == "53400"
        # The stopped statement got exactly what the budget had left.
        delivered = stack.result_of("select * from big")
        assert delivered["sqlstate"] == "53400"
        assert delivered["rows"] == ROWS_LIMIT - 601  # 600 + the prepared one before
        # The session answers every next statement, in order, with the same refusal.
        for _ in range(2):
            with pytest.raises(psycopg.errors.ConfigurationLimitExceeded, match="admin-rows"):
                conn.execute("select 1")
        # A statement prepared before: its Bind is refused (nothing is parsed again).
        with pytest.raises(psycopg.errors.ConfigurationLimitExceeded, match="admin-rows"):
            conn.execute(prepared, (2,), prepare=True)
        assert not conn.closed
    exceeded = [e["data"] for e in stack.gw.audit("budget.exceeded")]
    assert exceeded and exceeded[0]["budget"] == "admin-rows"
    assert exceeded[0]["rows"] == ROWS_LIMIT
    stopped = [e["data"] for e in stack.gw.audit("budget.stopped")]
    assert stopped and stopped[0]["budget"] == "admin-rows"
    refused = [e["data"] for e in stack.gw.audit("pg.refused") if e["data"].get("budget")]
    assert refused and refused[-1]["budget"] == "admin-rows"
    assert stack.usage("admin-rows")["rows"] == ROWS_LIMIT
    usage = stack.wg.cli(stack.gw, "budgets", "usage", "--user", "admin", "--connection", "pg-rows")
    assert usage.returncode == 0, usage.stderr
    assert re.search(rf"\sadmin\s+pg-rows\s+admin-rows\s+{ROWS_LIMIT}\s", usage.stdout), (
        usage.stdout
    )

    # psql (simple protocol): refused, the reason and SQLSTATE in its own protocol.
    out = stack.psql("pg-rows", "-c", "select 42")
    assert out.returncode != 0 and "53400" in out.stderr and "admin-rows" in out.stderr, out
    # Other connections and other users are not affected.
    free = stack.psql("pg-free", "-c", "select count(*) from big")
    assert free.stdout.strip() == str(BIG_ROWS), free.stderr
    with psycopg.connect(_analyst_conninfo(stack), autocommit=True) as other:
        assert len(other.execute("select * from big limit 2000").fetchall()) == 2000


def test_the_usage_survives_a_gateway_restart(stack: Stack) -> None:
    if not stack.usage("admin-rows")["rows"] >= ROWS_LIMIT:  # run alone: exhaust it first
        stack.psql("pg-rows", "-c", "select * from big")
    stack.gw.restart()
    stack.gw.wait_agent("default")
    out = stack.psql("pg-rows", "-c", "select 1")
    assert out.returncode != 0 and "admin-rows" in out.stderr, out


def test_a_bytes_budget_stops_a_wide_result(stack: Stack) -> None:
    query = "select repeat('y', 1000) from generate_series(1, 5000)"
    out = stack.psql("pg-bytes", "-c", query, "-c", "select 'after'")
    assert out.returncode != 0 and "after" not in out.stdout
    assert out.stderr.count("53400") == 2 and "admin-bytes" in out.stderr, out
    assert "limit 300000 bytes per day" in out.stderr
    stopped = stack.result_of(query)
    assert stopped["sqlstate"] == "53400"
    assert 0 < stopped["rows"] < 5000
    # Past the limit: less than the row that reached it (1,000 bytes of text in a DataRow)
    # and the closing messages; the gateway's own 53400 answers are not the server's bytes.
    used = stack.usage("admin-bytes")["bytes"]
    assert BYTES_LIMIT <= used <= BYTES_LIMIT + 1100 + 512


def test_replicas_share_the_usage(
    wardgate: Wardgate,
    postgres_server: PostgresServer,
    postgres_db: PostgresServer,
    budget_db: PostgresServer,
) -> None:
    """Two gateways on one PostgreSQL store: what one session read counts on the other."""
    shared = {
        "store": postgres_db.url(),
        "secret_key": SecretBox.generate_key(),
        "policy": {"budgets": [{"name": "shared", "rows_per_day": 300}]},
    }
    first = wardgate.gateway(**shared)
    second = wardgate.gateway(**shared)
    wardgate.agent(first, first.create_agent("a1", "default"), wait="a1")
    wardgate.agent(second, second.create_agent("a2", "default"), wait="a2")
    first.create_connection(
        name="pg-rows",
        type="postgres",
        host="127.0.0.1",
        port=postgres_server.port,
        database="budgetapp",
        username="budget_app",
        password=APP_PASSWORD,
    )
    one, two = Stack(wardgate, first), Stack(wardgate, second)
    with psycopg.connect(one.conninfo("pg-rows"), autocommit=True) as conn:
        assert len(conn.execute("select * from big limit 200").fetchall()) == 200
    # An ended session's usage reaches the store within the ledger's interval ...
    wait_for(lambda: one.usage("shared")["rows"] == 200, "the first session's rows stored")
    # ... and then counts on the other replica.
    with psycopg.connect(two.conninfo("pg-rows"), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.ConfigurationLimitExceeded, match="'shared'"):
            conn.execute("select * from big limit 200").fetchall()
        assert two.result_of("select * from big limit 200")["rows"] == 100
    with (
        psycopg.connect(one.conninfo("pg-rows"), autocommit=True) as conn,
        pytest.raises(psycopg.errors.ConfigurationLimitExceeded, match="'shared'"),
    ):
        conn.execute("select 1")
    assert one.usage("shared")["rows"] == 300


def test_copy_to_stdout_is_stopped_by_a_bytes_budget(stack: Stack) -> None:
    out = stack.psql("pg-copy", "-c", "copy big to stdout", "-c", "select 'after'")
    assert out.returncode != 0 and "after" not in out.stdout
    assert out.stderr.count("53400") == 2 and "admin-copy" in out.stderr, out.stderr
    # COPY rows are CopyData: cut before the first one that starts past the limit.
    assert 0 < len(out.stdout.encode()) <= BYTES_LIMIT
    assert BIG_ROWS > out.stdout.count("\n") > 0
    used = stack.usage("admin-copy")["bytes"]
    assert BYTES_LIMIT <= used <= BYTES_LIMIT + PAD + 512


REVIEW_ID = re.compile(r"rv_[0-9a-f]{12}")
ASK_LIMIT = 100


def test_a_review_budget_holds_the_next_statement_until_another_person_approves(
    wardgate: Wardgate, postgres_server: PostgresServer, budget_db: PostgresServer
) -> None:
    policy = {
        "budgets": [
            {
                "name": "admin-ask",
                "match": {"users": ["admin"]},
                "rows_per_day": ASK_LIMIT,
                "on_exceed": "review",
                "review": {"approvers": {"groups": ["dba"]}, "timeout": 120},
            }
        ]
    }
    gw = wardgate.gateway(
        secret_key=SecretBox.generate_key(), identity={"local_users": True}, policy=policy
    )
    wardgate.agent(gw, gw.create_agent("default"), wait="default")
    gw.create_connection(
        name="pg-ask",
        type="postgres",
        host="127.0.0.1",
        port=postgres_server.port,
        database="budgetapp",
        username="budget_app",
        password=APP_PASSWORD,
    )
    bob = gw.local_login("bob", ["dba"])
    stack = Stack(wardgate, gw)
    notices: list[str] = []
    with psycopg.connect(stack.conninfo("pg-ask"), autocommit=True) as conn:
        conn.add_notice_handler(lambda diag: notices.append(diag.message_primary or ""))
        # A running result that crosses the limit is still stopped: it cannot be held.
        with pytest.raises(psycopg.errors.ConfigurationLimitExceeded, match="admin-ask"):
            conn.execute("select * from big limit 150").fetchall()
        assert stack.result_of("select * from big limit 150")["rows"] == ASK_LIMIT

        # The next statement is held; the client gets the review id as a notice.
        query = "select * from big limit 500"
        outcome: dict[str, Any] = {}

        def run() -> None:
            try:
                outcome["rows"] = len(conn.execute(query).fetchall())
            except Exception as exc:
                outcome["error"] = exc

        waiting = threading.Thread(target=run, daemon=True)
        waiting.start()
        found = wait_for(lambda: REVIEW_ID.search(" ".join(notices)), "the review notice")
        review_id = found.group(0)
        assert "admin-ask" in " ".join(notices)
        shown = wardgate.cli(gw, "reviews", "show", review_id, token=bob)
        assert shown.returncode == 0 and query in shown.stdout, shown
        assert waiting.is_alive()
        # Nobody approves their own statement.
        own = wardgate.cli(gw, "reviews", "approve", review_id)
        assert own.returncode != 0, own
        approved = wardgate.cli(gw, "reviews", "approve", review_id, token=bob)
        assert approved.returncode == 0, approved.stderr
        waiting.join(30)
        assert not waiting.is_alive()
        # Approved, it runs in full: its result is not cut by the budget it asked past.
        assert outcome == {"rows": 500}, outcome
        assert stack.result_of(query)["rows"] == 500
        # Still counted; usage reaches the store within a flush interval.
        wait_for(
            lambda: stack.usage("admin-ask")["rows"] >= ASK_LIMIT + 500, "approved rows counted"
        )
        assert stack.usage("admin-ask")["rows"] == ASK_LIMIT + 500

        # The approval was for that statement: the next one asks again; denied, 53400.
        notices.clear()
        outcome.clear()
        waiting = threading.Thread(target=run, daemon=True)
        waiting.start()
        found = wait_for(lambda: REVIEW_ID.search(" ".join(notices)), "the second notice")
        assert found.group(0) != review_id
        denied = wardgate.cli(gw, "reviews", "deny", found.group(0), token=bob)
        assert denied.returncode == 0, denied.stderr
        waiting.join(30)
        error = outcome.get("error")
        assert isinstance(error, psycopg.errors.ConfigurationLimitExceeded), outcome
        assert "denied" in str(error)
        # The session goes on (and the next statement would be held again).
        assert not conn.closed
    refused = [e["data"] for e in gw.audit("pg.refused")]
    assert refused and refused[-1]["budget"] == "admin-ask"
    kinds = [e["kind"] for e in gw.audit() if e["data"].get("review") == review_id]
    assert "review.created" in kinds and "review.approved" in kinds


def test_policy_explain_shows_the_budgets_and_todays_usage(stack: Stack) -> None:
    stack.psql("pg-rows", "-c", "select * from big")  # exhausted (already, or now)
    out = stack.wg.cli(
        stack.gw, "policy", "explain", "--user", "admin", "--connection", "pg-rows", "select 1"
    )
    assert out.returncode == 0, out.stderr
    budgets = [line for line in out.stdout.splitlines() if line.startswith("budget:")]
    assert budgets == [
        f"budget: admin-rows {ROWS_LIMIT} rows/day on_exceed=stop used today: {ROWS_LIMIT} "
        f"rows, {stack.usage('admin-rows')['bytes']} bytes (exhausted)"
    ]
    with stack.gw.api() as api:
        free = api.post(
            "/v1/policy/explain", json={"user": "admin", "connection": "pg-free", "sql": "select 1"}
        ).json()
    assert free["budgets"] == []
