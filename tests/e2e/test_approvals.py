"""Approvals end to end: held statements, votes with segregation of duties, access requests.

Two gateway replicas share one PostgreSQL store (the agent is on the first); local users
sign in with password + TOTP: alice (dev) works on the data, bob and carol (dba) approve,
dave (dev) may not approve, alice-bot is alice's service account (in dba, owned by alice).
Statements that need review are held by the gateway while the real psql or psycopg client
waits; votes are cast with the real CLI or the API; a real local HTTP server receives the
signed webhook.
"""

from __future__ import annotations

import dataclasses
import json
import re
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from gateway.crypto import SecretBox
from gateway.reviews.webhook import SIGNATURE_HEADER, verify
from tests.fixtures.postgres import PostgresServer
from tests.fixtures.wardgate import GatewayProc, Wardgate, free_port, wait_for

pytestmark = pytest.mark.e2e

APP_PASSWORD = "approvals-app-Pw9"
WEBHOOK_SECRET = "whsec-approvals-test-0123456789"
REVIEW_ID = re.compile(r"rv_[0-9a-f]{12}")
DBA = {"approvers": {"groups": ["dba"]}}

POLICY = {
    "rules": [
        {
            "name": "no-drop",
            "effect": "deny",
            "message": "nobody drops accounts",
            "match": {"kinds": ["ddl"], "tables": ["accounts"], "flags": []},
        },
        {
            "name": "account-writes",
            "effect": "review",
            "message": "writes to accounts need a second person",
            "match": {"kinds": ["write"], "tables": ["accounts"]},
            "review": {**DBA, "timeout": 120},
        },
        {
            "name": "schema-changes",
            "effect": "review",
            "match": {"kinds": ["ddl"]},
            "review": {**DBA, "required": 2, "timeout": 120},
        },
        {
            "name": "slow-lane",
            "effect": "review",
            "match": {"kinds": ["write"], "tables": ["slow_lane"]},
            "review": {**DBA, "timeout": 1},
        },
    ]
}
ROLES = [
    {
        "name": "devs",
        "groups": ["dev"],
        "grants": [
            {"connection": "pg-main", "access": "read-write"},
            {
                "connection": "pg-prod",
                "access": "read-write",
                "request": {**DBA, "max_duration": 4 * 3600},
            },
        ],
    },
    {
        "name": "dbas",
        "groups": ["dba"],
        "grants": [{"connection": "pg-main", "access": "read-write"}],
    },
]


@dataclass
class Hooks:
    """A real HTTP server that keeps what the gateway POSTs to it."""

    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def events(self, review_id: str) -> list[str]:
        with self.lock:
            out = []
            for headers, body in self.received:
                data = json.loads(body)
                if data["review"]["id"] == review_id:
                    assert verify(WEBHOOK_SECRET, body, headers[SIGNATURE_HEADER]), headers
                    out.append(f"{data['event']}:{data['review']['status']}")
            return out


@pytest.fixture(scope="module")
def hooks() -> Iterator[tuple[Hooks, int]]:
    sink = Hooks()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            with sink.lock:
                sink.received.append(({k: v for k, v in self.headers.items()}, body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield sink, server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@dataclass
class Stack:
    wg: Wardgate
    gw: GatewayProc
    gw2: GatewayProc  # a second replica on the same store, without agents
    db: PostgresServer
    hooks: Hooks
    tokens: dict[str, str]

    def conninfo(self, user: str, dbname: str = "pg-main") -> str:
        return (
            f"host=127.0.0.1 port={self.gw.public_port} dbname={dbname} user={user} "
            f"password={self.tokens[user]} sslmode=verify-full sslrootcert={self.gw.ca_path}"
        )

    def cli(
        self, user: str, *args: str, gw: GatewayProc | None = None
    ) -> subprocess.CompletedProcess[str]:
        return self.wg.cli(gw or self.gw, *args, token=self.tokens[user])

    def api(self, user: str, *, gw: GatewayProc | None = None) -> Any:
        return (gw or self.gw).api(self.tokens[user])

    def balance(self, account: int) -> int:
        with psycopg.connect(self.db.dsn()) as conn:
            row = conn.execute("select balance from accounts where id = %s", (account,)).fetchone()
        assert row is not None
        return int(row[0])

    def pending_of(self, requester: str) -> list[dict[str, Any]]:
        with self.api("bob") as api:
            r = api.get("/v1/reviews", params={"status": "pending"})
            r.raise_for_status()
        return [x for x in r.json() if x["requester"] == requester]


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory,
    postgres_server: PostgresServer,
    hooks: tuple[Hooks, int],
) -> Iterator[Stack]:
    sink, hook_port = hooks
    with postgres_server.connect() as admin:
        for name in ("approvalsapp", "approvalsstore"):
            admin.execute(sql.SQL("drop database if exists {}").format(sql.Identifier(name)))
        admin.execute(sql.SQL("drop role if exists approvals_app"))
        admin.execute(
            sql.SQL("create role approvals_app login password {}").format(sql.Literal(APP_PASSWORD))
        )
        admin.execute(sql.SQL("create database approvalsapp owner approvals_app"))
    store = postgres_server.create_database("approvalsstore")
    db = dataclasses.replace(postgres_server, dbname="approvalsapp")
    with psycopg.connect(db.dsn(), autocommit=True) as conn:
        conn.execute("set role approvals_app")
        conn.execute("create table accounts (id int primary key, balance int not null)")
        conn.execute("insert into accounts select g, 100 from generate_series(1, 10) g")
        conn.execute("create table slow_lane (id int)")
    wg = Wardgate(tmp_path_factory.mktemp("approvals"))
    try:
        shared = {
            "store": store.url(),
            "secret_key": SecretBox.generate_key(),
            "identity": {"local_users": True},
            "roles": ROLES,
            "policy": POLICY,
            "reviews": {
                "webhook": {"url": f"http://127.0.0.1:{hook_port}/hook", "secret": WEBHOOK_SECRET},
                "poll_interval": 0.5,
            },
        }
        gw = wg.gateway(**shared)
        gw2 = wg.gateway(**shared)
        wg.agent(gw, gw.create_agent("default"), wait="default")
        for name in ("pg-main", "pg-prod"):
            gw.create_connection(
                name=name,
                type="postgres",
                host="127.0.0.1",
                port=postgres_server.port,
                database="approvalsapp",
                username="approvals_app",
                password=APP_PASSWORD,
            )
        tokens = {
            "alice": gw.local_login("alice", ["dev"]),
            "bob": gw.local_login("bob", ["dba"]),
            "carol": gw.local_login("carol", ["dba"]),
            "dave": gw.local_login("dave", ["dev"]),
        }
        with gw.api() as api:
            r = api.post("/v1/service-accounts", json={"name": "alice-bot", "groups": ["dba"]})
            assert r.status_code == 201, r.text
            r = api.post("/v1/service-accounts/alice-bot/keys", json={"scopes": ["pg-*"]})
            assert r.status_code == 201, r.text
            tokens["alice-bot"] = r.json()["key"]
        owner = wg.cli(gw, "service-account", "owner", "alice-bot", "alice")
        assert owner.returncode == 0, owner.stderr
        yield Stack(wg, gw, gw2, db, sink, tokens)
    finally:
        wg.close()


def _in_thread(work: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    """Run a blocking client call (a held statement) in a thread; its outcome in the dict."""
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["value"] = work()
        except Exception as exc:
            result["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result


def test_psql_waits_for_approval_through_the_cli_then_the_statement_runs(
    stack: Stack, tmp_path: Path
) -> None:
    err = tmp_path / "psql.err"
    with err.open("w") as stderr:
        psql = subprocess.Popen(
            [
                "psql",
                stack.conninfo("alice"),
                "-X",
                "-At",
                "-c",
                "update accounts set balance = 1 where id = 1",
                "-c",
                "select balance from accounts where id = 1",
            ],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    try:
        # The notice reaches psql at once, while its statement is held.
        notice = wait_for(lambda: REVIEW_ID.search(err.read_text()), "the review notice in psql")
        review_id = notice.group(0)
        assert f"wardgate reviews approve {review_id}" in err.read_text()
        assert psql.poll() is None
        assert stack.balance(1) == 100
        shown = stack.cli("bob", "reviews", "show", review_id)
        assert "update accounts set balance = 1 where id = 1" in shown.stdout, shown
        assert re.search(r"^requester:\s+alice$", shown.stdout, re.M), shown.stdout
        approved = stack.cli("bob", "reviews", "approve", review_id, "--reason", "looks right")
        assert approved.returncode == 0, approved.stderr
        assert "approved" in approved.stdout
        out, _ = psql.communicate(timeout=30)
    finally:
        if psql.poll() is None:
            psql.kill()
            psql.wait()
    assert psql.returncode == 0, err.read_text()
    assert out.split() == ["UPDATE", "1", "1"]
    assert stack.balance(1) == 1
    kinds = [e["kind"] for e in stack.gw.audit() if e["data"].get("review") == review_id]
    assert kinds == ["review.created", "review.vote", "review.approved"]
    # The webhook got both events, signed.
    wait_for(
        lambda: (
            stack.hooks.events(review_id) == ["review.created:pending", "review.decided:approved"]
        ),
        "the webhook events",
    )


def test_denied_write_is_refused_with_42501_and_the_session_goes_on(stack: Stack) -> None:
    notices: list[str] = []
    with psycopg.connect(stack.conninfo("alice"), autocommit=True) as conn:
        conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
        thread, result = _in_thread(
            lambda: conn.execute("update accounts set balance = 0 where id = 2")
        )
        found = wait_for(lambda: REVIEW_ID.search(" ".join(notices)), "the review notice")
        with stack.api("carol") as api:
            r = api.post(f"/v1/reviews/{found.group(0)}/deny", json={"reason": "not today"})
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "denied"
        thread.join(30)
        error = result.get("error")
        assert isinstance(error, psycopg.errors.InsufficientPrivilege), result
        assert error.sqlstate == "42501"
        assert found.group(0) in str(error) and "not today" in str(error)
        # The same session keeps working.
        assert conn.execute("select balance from accounts where id = 2").fetchone() == (100,)
    assert stack.balance(2) == 100


def test_a_statement_nobody_reviews_times_out(stack: Stack) -> None:
    with psycopg.connect(stack.conninfo("alice"), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="timed out"):
            conn.execute("insert into slow_lane values (1)")
        assert conn.execute("select count(*) from slow_lane").fetchone() == (0,)
    expired = [e for e in stack.gw.audit("review.expired") if e["actor"] == "alice"]
    assert expired


def test_extended_protocol_prepared_statement_is_asked_once(stack: Stack) -> None:
    query = "update accounts set balance = balance + %s where id = %s"
    with psycopg.connect(stack.conninfo("alice"), autocommit=True) as conn:
        thread, result = _in_thread(lambda: conn.execute(query, (5, 3), prepare=True))
        review = wait_for(lambda: stack.pending_of("alice"), "the held Parse")[0]
        assert review["text"] == "update accounts set balance = balance + $1 where id = $2"
        with stack.api("bob") as api:
            assert api.post(f"/v1/reviews/{review['id']}/approve", json={}).status_code == 200
        thread.join(30)
        assert "error" not in result, result
        # Executing the prepared statement again is not a new review.
        conn.execute(query, (5, 3), prepare=True)
        conn.execute(query, (5, 3), prepare=True)
    assert stack.balance(3) == 115
    assert not stack.pending_of("alice")
    with stack.api("bob") as api:
        mine = [
            r
            for r in api.get("/v1/reviews").json()
            if r["text"] == review["text"] and r["requester"] == "alice"
        ]
    assert len(mine) == 1


def test_nobody_approves_their_own_request_nor_through_their_service_account(
    stack: Stack,
) -> None:
    # bob (a dba) cannot approve his own write.
    with psycopg.connect(stack.conninfo("bob"), autocommit=True) as conn:
        thread, result = _in_thread(
            lambda: conn.execute("update accounts set balance = 7 where id = 4")
        )
        bobs = wait_for(lambda: stack.pending_of("bob"), "bob's review")[0]["id"]
        own = stack.cli("bob", "reviews", "approve", bobs)
        assert own.returncode != 0
        assert "nobody reviews their own request" in own.stderr
        with stack.api("carol") as api:
            assert api.post(f"/v1/reviews/{bobs}/approve", json={}).status_code == 200
        thread.join(30)
        assert "error" not in result, result
    assert stack.balance(4) == 7
    # alice's service account is in dba, but alice answers for it.
    with psycopg.connect(stack.conninfo("alice"), autocommit=True) as conn:
        thread, result = _in_thread(
            lambda: conn.execute("update accounts set balance = 8 where id = 5")
        )
        alices = wait_for(lambda: stack.pending_of("alice"), "alice's review")[0]["id"]
        with stack.api("alice-bot") as api:
            via_bot = api.post(f"/v1/reviews/{alices}/approve", json={})
        assert via_bot.status_code == 403
        assert "answer to the same person (alice)" in via_bot.json()["detail"]
        # dave is not an approver; alice may not even vote.
        not_dba = stack.cli("dave", "reviews", "approve", alices)
        assert not_dba.returncode != 0 and "'dave' may not review" in not_dba.stderr
        with stack.api("alice") as api:
            assert api.post(f"/v1/reviews/{alices}/approve", json={}).status_code == 403
        assert stack.balance(5) == 100
        # bob approves through the other replica: the waiting session sees it via the store.
        voted = stack.cli("bob", "reviews", "approve", alices, gw=stack.gw2)
        assert voted.returncode == 0, voted.stderr
        thread.join(30)
        assert "error" not in result, result
    assert stack.balance(5) == 8
    refused = [e["data"]["reason"] for e in stack.gw.audit("review.vote_refused")]
    assert any("nobody reviews their own request" in r for r in refused)


def test_a_two_approver_rule_needs_two_distinct_people(stack: Stack) -> None:
    with psycopg.connect(stack.conninfo("alice"), autocommit=True) as conn:
        thread, result = _in_thread(lambda: conn.execute("create table ledger (id int)"))
        review = wait_for(lambda: stack.pending_of("alice"), "the held DDL")[0]["id"]
        first = stack.cli("bob", "reviews", "approve", review)
        assert first.returncode == 0 and "pending" in first.stdout, first
        again = stack.cli("bob", "reviews", "approve", review)
        assert again.returncode != 0 and "already voted" in again.stderr
        assert thread.is_alive()
        second = stack.cli("carol", "reviews", "approve", review)
        assert second.returncode == 0 and "approved" in second.stdout, second
        thread.join(30)
        assert "error" not in result, result
        assert conn.execute("select count(*) from ledger").fetchone() == (0,)


def test_policy_explain_shows_the_review(stack: Stack) -> None:
    out = stack.wg.cli(
        stack.gw,
        "policy",
        "explain",
        "--user",
        "alice",
        "--connection",
        "pg-main",
        "delete from accounts where id = 9",
    )
    assert out.returncode == 0, out.stderr
    assert "decision: review" in out.stdout
    assert "review: 1 of group dba within 120s" in out.stdout
    denied = stack.wg.cli(
        stack.gw,
        "policy",
        "explain",
        "--user",
        "alice",
        "--connection",
        "pg-main",
        "drop table accounts",
    )
    assert "decision: deny" in denied.stdout  # deny wins over review


def test_time_boxed_access_request(stack: Stack) -> None:
    refused = subprocess.run(
        ["psql", stack.conninfo("alice", "pg-prod"), "-X", "-At", "-c", "select 1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    # The refusal says how to get access (psql shows the ErrorResponse; the API its 403).
    hint = 'wardgate request pg-prod --for 1h --reason "..."'
    assert refused.returncode != 0, refused.stderr
    assert "user 'alice' needs an approved access request for 'pg-prod'" in refused.stderr
    assert hint in refused.stderr
    with pytest.raises(psycopg.OperationalError) as caught:
        psycopg.connect(stack.conninfo("alice", "pg-prod")).close()
    assert hint in str(caught.value)  # libpq gives no SQLSTATE for a refused connection
    with stack.api("alice") as api:
        minting = api.post("/v1/credentials/connection", json={"connection": "pg-prod"})
    assert minting.status_code == 403 and hint in minting.json()["detail"], minting.text
    nope = stack.cli("dave", "request", "pg-main", "--for", "1h", "--reason", "x")
    assert nope.returncode != 0 and "no role lets" in nope.stderr
    asked = stack.cli("alice", "request", "pg-prod", "--for", "2h", "--reason", "incident 42")
    assert asked.returncode == 0, asked.stderr
    review_id = REVIEW_ID.search(asked.stdout)
    assert review_id is not None, asked.stdout
    assert "pending" in asked.stdout
    listed = stack.cli("bob", "reviews", "list", "--status", "pending", "--kind", "access")
    assert review_id.group(0) in listed.stdout and "incident 42" in listed.stdout
    own = stack.cli("alice", "reviews", "approve", review_id.group(0))
    assert own.returncode != 0 and "nobody reviews their own request" in own.stderr
    ok = stack.cli("carol", "reviews", "approve", review_id.group(0), "--reason", "go")
    assert ok.returncode == 0 and "approved" in ok.stdout, ok
    shown = stack.cli("alice", "reviews", "show", review_id.group(0))
    assert "access until:" in shown.stdout
    # The grant also mints per-connection credentials (what `wardgate psql` uses).
    minted = stack.cli("alice", "creds", "pg-prod")
    assert minted.returncode == 0, minted.stderr
    allowed = subprocess.run(
        ["psql", minted.stdout.strip(), "-X", "-At", "-c", "select 41 + 1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert allowed.returncode == 0, allowed.stderr
    assert allowed.stdout.strip() == "42"
    opened = [
        e
        for e in stack.gw.audit("session.open")
        if e["actor"] == "alice" and e["data"]["connection"] == "pg-prod"
    ]
    assert opened and opened[-1]["data"]["access"] == "read-write"
    wait_for(
        lambda: (
            stack.hooks.events(review_id.group(0))
            == ["review.created:pending", "review.decided:approved"]
        ),
        "the webhook events of the access request",
    )


def test_psql_ctrl_c_withdraws_the_held_statement(stack: Stack, tmp_path: Path) -> None:
    err = tmp_path / "psql.err"
    with err.open("w") as stderr:
        psql = subprocess.Popen(
            [
                "psql",
                stack.conninfo("alice"),
                "-X",
                "-At",
                "-c",
                "delete from accounts where id = 6",
            ],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    try:
        review_id = wait_for(lambda: REVIEW_ID.search(err.read_text()), "the notice").group(0)
        psql.send_signal(signal.SIGINT)  # psql sends a CancelRequest, as on Ctrl-C
        psql.communicate(timeout=30)
    finally:
        if psql.poll() is None:
            psql.kill()
            psql.wait()
    assert psql.returncode != 0
    assert "canceling statement due to user request" in err.read_text()
    with stack.api("bob") as api:
        assert api.get(f"/v1/reviews/{review_id}").json()["status"] == "cancelled"
        late = api.post(f"/v1/reviews/{review_id}/approve", json={})
    assert late.status_code == 409
    assert stack.balance(6) == 100


def test_sessions_through_an_access_request_end_when_it_expires(stack: Stack) -> None:
    with stack.api("dave") as api:
        asked = api.post(
            "/v1/requests", json={"connection": "pg-prod", "duration": 10, "reason": "a quick look"}
        )
    assert asked.status_code == 201, asked.text
    with stack.api("carol") as api:
        assert api.post(f"/v1/reviews/{asked.json()['id']}/approve", json={}).status_code == 200
    with psycopg.connect(stack.conninfo("dave", "pg-prod"), autocommit=True) as conn:
        assert conn.execute("select 1").fetchone() == (1,)

        def ended() -> bool:
            try:
                conn.execute("select 1")
            except psycopg.OperationalError:
                return True
            return False

        wait_for(ended, "the session to end with its access request", timeout=60)
    terminated = [e for e in stack.gw.audit("session.terminated") if e["actor"] == "dave"]
    assert [e["data"]["reason"] for e in terminated] == ["access request expired"]
    refused = subprocess.run(
        ["psql", stack.conninfo("dave", "pg-prod"), "-X", "-At", "-c", "select 1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode != 0 and "needs an approved access request" in refused.stderr


def test_a_client_that_hangs_up_while_held_has_its_review_cancelled(
    stack: Stack, tmp_path: Path
) -> None:
    err = tmp_path / "psql.err"
    with err.open("w") as stderr:
        psql = subprocess.Popen(
            ["psql", stack.conninfo("alice"), "-X", "-c", "delete from accounts where id = 8"],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        review_id = wait_for(lambda: REVIEW_ID.search(err.read_text()), "the notice").group(0)
    finally:
        psql.kill()
        psql.wait()

    def status() -> str:
        with stack.api("bob") as api:
            return str(api.get(f"/v1/reviews/{review_id}").json()["status"])

    wait_for(lambda: status() == "cancelled", "the review to be cancelled")
    with stack.api("bob") as api:
        assert "client went away" in api.get(f"/v1/reviews/{review_id}").json()["decision"]
    assert stack.balance(8) == 100


def test_a_multi_statement_query_waits_whole_and_runs_nothing_when_it_times_out(
    stack: Stack,
) -> None:
    out = subprocess.run(
        [
            "psql",
            stack.conninfo("alice"),
            "-X",
            "-At",
            "-c",
            "insert into slow_lane values (9); update accounts set balance = 9 where id = 9",
            "-c",
            "select 'still here'",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "statement 1 of 2" in out.stderr and "timed out" in out.stderr, out
    assert out.stdout.strip() == "still here"
    assert stack.balance(9) == 100
    with psycopg.connect(stack.db.dsn()) as conn:
        assert conn.execute("select count(*) from slow_lane").fetchone() == (0,)


def test_a_review_in_the_middle_of_a_pipeline_ends_the_session_closed(stack: Stack) -> None:
    with (
        psycopg.connect(stack.conninfo("alice"), autocommit=True) as conn,
        pytest.raises(
            psycopg.errors.InsufficientPrivilege, match="cannot be held in the middle of a pipeline"
        ) as exc,
        conn.pipeline(),
    ):
        conn.execute("select 1")
        conn.execute("update accounts set balance = %s where id = %s", (0, 10))
    assert exc.value.sqlstate == "42501"
    assert stack.balance(10) == 100
    assert not stack.pending_of("alice")
    ended = [e["data"] for e in stack.gw.audit("pg.refused") if e["data"].get("ended_session")]
    assert "cannot be held in the middle of a pipeline" in ended[-1]["reason"]
