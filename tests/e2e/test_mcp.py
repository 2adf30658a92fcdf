"""The MCP door end to end: the official MCP client against a real gateway, agent and PostgreSQL.

One database with a customers table; one gateway whose policy masks `email` for the
analysts and refuses DDL on `pg-app`; one agent. The service account `bot` (group analysts)
may read `pg-app` only; `pg-hidden` exists but is not for it. The MCP client signs in with
the account's API key as its bearer token, as Claude or the inspector would.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import httpx2
import psycopg
import pytest
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp_types import CallToolResult, TextContent
from psycopg import sql

from gateway.crypto import SecretBox
from tests.fixtures.kube_apiserver import KubeApiServerDouble, running_double
from tests.fixtures.postgres import PostgresServer
from tests.fixtures.sshd import start_sshd
from tests.fixtures.wardgate import GatewayProc, Wardgate, wait_for

pytestmark = pytest.mark.e2e

APP_PASSWORD = "mcp-app-secret-Kx4"
POLICY = {
    "rules": [
        {
            "name": "no-sleeping",
            "effect": "deny",
            "message": "nobody sleeps on the app database",
            "match": {"connections": ["pg-app"], "functions": ["pg_sleep"]},
        },
        {
            "name": "quick-reviews",
            "effect": "review",
            "match": {"connections": ["pg-rw"], "kinds": ["write"], "tables": ["slow_lane"]},
            "review": {"approvers": {"groups": ["dba"]}, "timeout": 1},
        },
        {
            "name": "reviewed-writes",
            "effect": "review",
            "message": "writes need a dba",
            "match": {"connections": ["pg-rw"], "kinds": ["write"]},
            "review": {"approvers": {"groups": ["dba"]}, "timeout": 120},
        },
    ],
    "masking": [
        {
            "name": "emails",
            "match": {"groups": ["analysts"], "connections": ["pg-app"]},
            "columns": ["customers.email"],
            "strategy": "redact",
        }
    ],
}
KUBE_POLICY = {
    "rules": [
        {
            "name": "no-deleting",
            "effect": "deny",
            "message": "pods are not deleted by hand",
            "match": {"verbs": ["delete"]},
        }
    ]
}
ROLES = [
    {
        "name": "analysts",
        "groups": ["analysts"],
        "grants": [
            {"connection": "pg-app", "access": "read-only"},
            {"connection": "pg-rw", "access": "read-write"},
        ],
    },
    {
        "name": "devs",
        "groups": ["dev"],
        "grants": [
            {
                "connection": "pg-hidden",
                "access": "read-only",
                "request": {"approvers": {"groups": ["dba"]}, "max_duration": 3600},
            },
            {"connection": "web-1", "access": "read-write"},
            {"connection": "kube-dev", "access": "read-write"},
        ],
    },
]


@dataclass
class Stack:
    wg: Wardgate
    gw: GatewayProc
    bot_key: str
    agent_key: str
    dba_token: str
    dev_token: str  # erin, group dev: may request access to pg-hidden, use web-1, kube-dev
    double: KubeApiServerDouble  # the kube-apiserver TEST DOUBLE behind kube-dev

    def call(
        self,
        tool: str,
        arguments: dict[str, Any],
        token: str | None = None,
        progress: list[str | None] | None = None,
    ) -> Any:
        return asyncio.run(_call(self.gw, token or self.bot_key, tool, arguments, progress))


async def _call(
    gw: GatewayProc,
    token: str,
    tool: str,
    arguments: dict[str, Any],
    messages: list[str | None] | None = None,
) -> Any:
    """One call; with `messages`, the call asks for progress and keeps each message."""

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        assert messages is not None
        messages.append(message)

    verify = ssl.create_default_context(cafile=str(gw.ca_path))
    async with (
        httpx2.AsyncClient(
            headers={"Authorization": f"Bearer {token}"}, verify=verify, timeout=60
        ) as http,
        streamable_http_client(f"{gw.url}/mcp", http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        if tool == "tools/list":
            return [t.name for t in (await session.list_tools()).tools]
        if messages is not None:
            return await session.call_tool(tool, arguments, progress_callback=on_progress)
        return await session.call_tool(tool, arguments)


def _error_text(result: CallToolResult) -> str:
    assert result.is_error, result
    return " ".join(c.text for c in result.content if isinstance(c, TextContent))


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, postgres_server: PostgresServer
) -> Iterator[Stack]:
    with postgres_server.connect() as admin:
        admin.execute(sql.SQL("drop database if exists mcpapp"))
        admin.execute(sql.SQL("drop role if exists mcp_app"))
        admin.execute(
            sql.SQL("create role mcp_app login password {}").format(sql.Literal(APP_PASSWORD))
        )
        admin.execute(sql.SQL("create database mcpapp owner mcp_app"))
    db = dataclasses.replace(postgres_server, dbname="mcpapp")
    with psycopg.connect(db.dsn(), autocommit=True) as conn:
        conn.execute("set role mcp_app")
        conn.execute("create table customers (id int primary key, name text, email text)")
        conn.execute("create table slow_lane (id int)")
        conn.execute(
            "insert into customers select g, 'name ' || g, 'c' || g || '@example.com'"
            " from generate_series(1, 500) g"
        )
    sshd = start_sshd(tmp_path_factory.mktemp("mcp-sshd"))
    later = contextlib.ExitStack()  # the double stops last: after the agent's connections
    double = later.enter_context(running_double(tmp_path_factory.mktemp("mcp-kube")))
    wg = Wardgate(tmp_path_factory.mktemp("mcp"))
    try:
        gw = wg.gateway(
            secret_key=SecretBox.generate_key(),
            policy=POLICY,
            roles=ROLES,
            identity={"local_users": True},
            reviews={"poll_interval": 0.5},
            mcp={"max_rows": 50},
            kubernetes=KUBE_POLICY,
        )
        agent_key = gw.create_agent("default")
        wg.agent(gw, agent_key, wait="default")
        for name in ("pg-app", "pg-hidden", "pg-rw"):
            gw.create_connection(
                name=name,
                type="postgres",
                host="127.0.0.1",
                port=postgres_server.port,
                database="mcpapp",
                username="mcp_app",
                password=APP_PASSWORD,
            )
        gw.create_connection(
            name="web-1",
            type="ssh",
            host="127.0.0.1",
            port=sshd.port,
            username=sshd.user,
            private_key=f"file:{sshd.client_key}",
            host_key=sshd.host_fingerprint,
            options={
                "ssh_deny_exec": "rm *",
                "ssh_review_exec": "touch *",
                "ssh_review": "{approvers: {groups: [dba]}, timeout: 120}",
            },
        )
        token_file = tmp_path_factory.mktemp("mcp-kube-token") / "cluster-token"
        token_file.write_text(double.token + "\n")
        gw.create_connection(
            name="kube-dev",
            type="kubernetes",
            host="127.0.0.1",
            port=double.port,
            options={"auth": "token", "certificate_authority": str(double.ca_path)},
            secrets={"token": f"file:{token_file}"},
        )
        with gw.api() as api:
            made = api.post("/v1/service-accounts", json={"name": "bot", "groups": ["analysts"]})
            assert made.status_code == 201, made.text
            issued = api.post("/v1/service-accounts/bot/keys", json={"scopes": ["pg-*"]})
            assert issued.status_code == 201, issued.text
        yield Stack(
            wg,
            gw,
            issued.json()["key"],
            agent_key,
            gw.local_login("dana", ["dba"]),
            gw.local_login("erin", ["dev"]),
            double,
        )
    finally:
        wg.close()
        later.close()
        sshd.proc.stop()


def test_the_tools_are_listed(stack: Stack) -> None:
    assert set(stack.call("tools/list", {})) == {
        "list_connections",
        "query",
        "describe",
        "request_access",
        "review_status",
        "ssh_exec",
        "kube",
    }


def test_list_connections_shows_only_what_the_identity_may_reach(stack: Stack) -> None:
    result = stack.call("list_connections", {})
    assert not result.is_error, result
    assert result.structured_content == {
        "user": "bot",
        "connections": [
            {"name": "pg-app", "type": "postgres", "access": "read-only", "on_request": False},
            {"name": "pg-rw", "type": "postgres", "access": "read-write", "on_request": False},
        ],
    }


def test_query_returns_rows_with_the_email_column_masked(stack: Stack) -> None:
    result = stack.call(
        "query",
        {
            "connection": "pg-app",
            "sql": "select id, name, email from customers where id <= 2 order by id",
        },
    )
    assert not result.is_error, result
    out = result.structured_content
    assert out["columns"] == ["id", "name", "email"]
    assert out["rows"] == [[1, "name 1", "[redacted]"], [2, "name 2", "[redacted]"]]
    assert "truncated" not in out


def test_a_long_result_is_cut_at_max_rows_with_a_note(stack: Stack) -> None:
    result = stack.call("query", {"connection": "pg-app", "sql": "select id from customers"})
    out = result.structured_content
    assert len(out["rows"]) == 50
    assert out["truncated"] is True
    assert out["note"] == "result truncated after 50 rows: the limit is 50 rows (mcp.max_rows)"


def test_a_write_on_read_only_access_is_a_tool_error_naming_the_reason(stack: Stack) -> None:
    result = stack.call(
        "query", {"connection": "pg-app", "sql": "delete from customers where id = 1"}
    )
    assert _error_text(result) == (
        "Error executing tool query: 42501: read-only access: DELETE writes data"
    )
    with psycopg.connect(stack.gw.pg_conninfo("pg-app"), autocommit=True) as conn:
        assert conn.execute("select count(*) from customers").fetchone() == (500,)


def test_a_statement_a_rule_denies_is_a_tool_error_with_the_rules_message(stack: Stack) -> None:
    result = stack.call("query", {"connection": "pg-app", "sql": "select pg_sleep(0)"})
    text = _error_text(result)
    assert text.startswith("Error executing tool query: 42501: "), text
    assert "nobody sleeps on the app database" in text


def test_a_connection_the_identity_may_not_reach_is_refused(stack: Stack) -> None:
    result = stack.call("query", {"connection": "pg-hidden", "sql": "select 1"})
    assert _error_text(result) == (
        "Error executing tool query: connection refused: "
        "user 'bot' has no access to connection 'pg-hidden'"
    )


def test_a_statement_without_rows_says_it_ran(stack: Stack) -> None:
    result = stack.call("query", {"connection": "pg-app", "sql": "set search_path = public"})
    assert result.structured_content == {
        "connection": "pg-app",
        "columns": [],
        "rows": [],
        "status": "done (the statement returns no rows)",
    }


def test_describe_lists_the_tables_and_columns_with_masked_ones_marked(stack: Stack) -> None:
    result = stack.call("describe", {"connection": "pg-app", "schema": "public"})
    assert not result.is_error, result
    tables = result.structured_content["tables"]
    assert [t["table"] for t in tables] == ["customers", "slow_lane"]
    assert tables[:1] == [
        {
            "schema": "public",
            "table": "customers",
            "columns": [
                {"name": "id", "type": "integer", "nullable": False},
                {"name": "name", "type": "text", "nullable": True},
                {"name": "email", "type": "text", "nullable": True, "masked": "redact"},
            ],
        }
    ]


def test_the_audit_shows_the_statement_under_the_callers_identity(stack: Stack) -> None:
    marker = "select 'mcp-audit-marker' as m"
    result = stack.call("query", {"connection": "pg-app", "sql": marker})
    assert result.structured_content["rows"] == [["mcp-audit-marker"]]
    statements = [e for e in stack.gw.audit("pg.statement") if e["data"].get("text") == marker]
    assert len(statements) == 1
    with stack.gw.api() as api:
        session = api.get(f"/v1/sessions/{statements[0]['session']}").json()
    assert session["user"] == "bot"
    assert session["connection"] == "pg-app"
    calls = [e for e in stack.gw.audit("mcp.call") if e["seq"] < statements[0]["seq"]]
    assert calls[-1]["actor"] == "bot"
    assert calls[-1]["data"]["tool"] == "query"
    assert calls[-1]["data"]["connection"] == "pg-app"
    assert calls[-1]["data"]["client"].startswith("127.0.0.1:")


def test_no_token_is_401_naming_the_resource_metadata(stack: Stack) -> None:
    verify = ssl.create_default_context(cafile=str(stack.gw.ca_path))
    with httpx.Client(base_url=stack.gw.url, verify=verify, timeout=30) as http:
        r = http.post("/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "ping"})
        assert r.status_code == 401
        meta_url = f"{stack.gw.url}/.well-known/oauth-protected-resource/mcp"
        assert r.headers["www-authenticate"] == f'Bearer resource_metadata="{meta_url}"'
        for path in (
            "/.well-known/oauth-protected-resource",
            "/.well-known/oauth-protected-resource/mcp",
        ):
            meta = http.get(path)
            assert meta.status_code == 200
            assert meta.json()["resource"] == f"{stack.gw.url}/mcp"
            assert meta.json()["authorization_servers"] == [stack.gw.url]


def test_an_agent_key_as_bearer_token_is_refused(stack: Stack) -> None:
    verify = ssl.create_default_context(cafile=str(stack.gw.ca_path))
    headers = {"Authorization": f"Bearer {stack.agent_key}"}
    with httpx.Client(base_url=stack.gw.url, verify=verify, timeout=30, headers=headers) as http:
        r = http.post("/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "ping"})
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("Bearer resource_metadata=")
    assert r.json() == {"detail": "missing or malformed credential"}


def test_tool_calls_are_counted_by_tool_and_outcome(stack: Stack) -> None:
    stack.call("query", {"connection": "pg-app", "sql": "select 1"})
    with stack.gw.api() as api:
        text = api.get("/metrics").text
    assert 'wardgate_mcp_tool_calls_total{outcome="ok",tool="query"}' in text


def test_a_held_write_runs_once_another_person_approves_it(stack: Stack) -> None:
    outcome: dict[str, Any] = {}
    update = "update customers set name = 'renamed' where id = 7"

    def call() -> None:
        outcome["result"] = stack.call("query", {"connection": "pg-rw", "sql": update})

    thread = threading.Thread(target=call, daemon=True)
    thread.start()

    def pending() -> list[dict[str, Any]]:
        with stack.gw.api(stack.dba_token) as api:
            listed = api.get("/v1/reviews", params={"status": "pending"}).json()
        return [r for r in listed if r["requester"] == "bot"]

    review = wait_for(pending, "the held update")[0]
    assert review["text"] == update
    with stack.gw.api(stack.dba_token) as api:
        assert api.post(f"/v1/reviews/{review['id']}/approve", json={}).status_code == 200
    thread.join(60)
    result = outcome["result"]
    assert not result.is_error, result
    assert result.structured_content["status"] == "done (the statement returns no rows)"
    with psycopg.connect(stack.gw.pg_conninfo("pg-rw"), autocommit=True) as conn:
        assert conn.execute("select name from customers where id = 7").fetchone() == ("renamed",)


def test_a_held_write_nobody_approves_is_a_tool_error_naming_the_review(stack: Stack) -> None:
    result = stack.call("query", {"connection": "pg-rw", "sql": "insert into slow_lane values (1)"})
    text = _error_text(result)
    assert re.search(r"rv_[0-9a-f]{12}", text), text
    assert "timed out" in text or "expired" in text, text
    with psycopg.connect(stack.gw.pg_conninfo("pg-rw"), autocommit=True) as conn:
        assert conn.execute("select count(*) from slow_lane").fetchone() == (0,)


def test_a_wide_result_is_cut_at_max_bytes_with_a_note(stack: Stack) -> None:
    wide = "select repeat('x', 100000) from generate_series(1, 5)"
    out = stack.call("query", {"connection": "pg-app", "sql": wide}).structured_content
    assert len(out["rows"]) == 2
    assert out["truncated"] is True
    assert out["note"] == (
        "result truncated after 2 rows: the limit is 262144 bytes (mcp.max_bytes)"
    )


def test_a_person_requests_access_and_follows_it_to_approval(stack: Stack) -> None:
    asked = stack.call(
        "request_access",
        {"connection": "pg-hidden", "duration": 600, "reason": "incident 19"},
        token=stack.dev_token,
    )
    assert not asked.is_error, asked
    review = asked.structured_content
    assert (review["kind"], review["status"], review["requester"]) == ("access", "pending", "erin")
    assert review["next"] == (
        f"another person approves it (wardgate reviews approve {review['id']}); "
        "ask review_status again later"
    )
    with stack.gw.api(stack.dba_token) as api:
        assert api.post(f"/v1/reviews/{review['id']}/approve", json={}).status_code == 200
    status = stack.call("review_status", {"review_id": review["id"]}, token=stack.dev_token)
    assert not status.is_error, status
    assert status.structured_content["status"] == "approved"
    assert status.structured_content["grant_expires_at"] is not None
    assert "next" not in status.structured_content
    ran = stack.call(
        "query", {"connection": "pg-hidden", "sql": "select 1 as one"}, token=stack.dev_token
    )
    assert ran.structured_content["rows"] == [[1]]


def test_a_service_account_key_cannot_request_access(stack: Stack) -> None:
    result = stack.call(
        "request_access", {"connection": "pg-hidden", "duration": 600, "reason": "x"}
    )
    assert _error_text(result) == (
        "Error executing tool request_access: access requests are made with a person's own sign-in"
    )


def test_review_status_follows_a_held_query_by_the_id_its_error_names(stack: Stack) -> None:
    held = stack.call("query", {"connection": "pg-rw", "sql": "insert into slow_lane values (2)"})
    found = re.search(r"rv_[0-9a-f]{12}", _error_text(held))
    assert found is not None
    status = stack.call("review_status", {"review_id": found.group()})
    assert not status.is_error, status
    out = status.structured_content
    assert (out["kind"], out["requester"], out["connection"]) == ("statement", "bot", "pg-rw")
    assert out["text"] == "insert into slow_lane values (2)"
    assert out["status"] in {"expired", "cancelled"}, out


def test_review_status_of_another_persons_review_is_refused(stack: Stack) -> None:
    held = stack.call("query", {"connection": "pg-rw", "sql": "insert into slow_lane values (3)"})
    found = re.search(r"rv_[0-9a-f]{12}", _error_text(held))
    assert found is not None
    result = stack.call("review_status", {"review_id": found.group()}, token=stack.dev_token)
    assert _error_text(result) == (
        f"Error executing tool review_status: no review '{found.group()}'"
    )


def test_ssh_exec_returns_stdout_stderr_and_the_exit_status(stack: Stack) -> None:
    result = stack.call(
        "ssh_exec",
        {"connection": "web-1", "command": "echo out; echo err >&2; exit 3"},
        token=stack.dev_token,
    )
    assert not result.is_error, result
    assert result.structured_content == {
        "connection": "web-1",
        "exit_status": 3,
        "stdout": "out\n",
        "stderr": "err\n",
    }
    execs = [e for e in stack.gw.audit("ssh.exec") if e["actor"] == "erin"]
    assert execs[-1]["data"]["command"] == "echo out; echo err >&2; exit 3"


def test_ssh_exec_of_a_command_the_connection_refuses_is_a_tool_error(stack: Stack) -> None:
    result = stack.call(
        "ssh_exec",
        {"connection": "web-1", "command": "rm -rf /tmp/wardgate-nothing-here"},
        token=stack.dev_token,
    )
    assert _error_text(result) == (
        "Error executing tool ssh_exec: command refused by pattern 'rm *' "
        "(connection 'web-1', user 'erin')"
    )


def test_ssh_exec_without_access_to_the_connection_is_refused(stack: Stack) -> None:
    text = _error_text(stack.call("ssh_exec", {"connection": "web-1", "command": "id"}))
    assert text == (
        "Error executing tool ssh_exec: user 'bot' has no access to connection 'web-1'\n"
        "`wardgate whoami` lists the connections you may use."
    )
    calls = [e for e in stack.gw.audit("mcp.call") if e["data"]["tool"] == "ssh_exec"]
    assert (calls[-1]["actor"], calls[-1]["data"]["connection"]) == ("bot", "web-1")


def test_ssh_exec_output_is_cut_at_max_bytes_with_a_note(stack: Stack) -> None:
    result = stack.call(
        "ssh_exec",
        {"connection": "web-1", "command": "head -c 400000 /dev/zero | tr '\\0' x"},
        token=stack.dev_token,
    )
    out = result.structured_content
    assert out["stdout"] == "x" * 262144
    assert out["exit_status"] is None
    assert out["truncated"] is True
    assert out["note"] == (
        "output truncated: the limit is 262144 bytes (mcp.max_bytes); the command was stopped"
    )


def test_kube_lists_pods_and_reads_a_log_as_the_caller(stack: Stack) -> None:
    listed = stack.call(
        "kube",
        {"connection": "kube-dev", "path": "/api/v1/namespaces/default/pods"},
        token=stack.dev_token,
    )
    assert not listed.is_error, listed
    out = listed.structured_content
    assert out["status"] == 200
    assert [p["metadata"]["name"] for p in out["body"]["items"]] == ["web-1", "web-2"]
    logs = stack.call(
        "kube",
        {"connection": "kube-dev", "path": "/api/v1/namespaces/default/pods/web-1/log"},
        token=stack.dev_token,
    )
    assert logs.structured_content["body"] == "starting\nready\n"
    seen = [e for e in stack.gw.audit("k8s.request") if e["actor"] == "erin"]
    assert seen[-1]["data"]["verb"] == "get"


def test_kube_a_delete_the_policy_denies_is_a_tool_error_and_never_sent(stack: Stack) -> None:
    result = stack.call(
        "kube",
        {
            "connection": "kube-dev",
            "path": "/api/v1/namespaces/default/pods/web-2",
            "method": "DELETE",
        },
        token=stack.dev_token,
    )
    text = _error_text(result)
    assert text.startswith("Error executing tool kube: 403 Forbidden: "), text
    assert "pods are not deleted by hand" in text
    assert ("default", "web-2") in stack.double.pods
    assert not [r for r in stack.double.requests if r["method"] == "DELETE"]


def test_kube_a_watch_is_refused_before_anything_is_sent(stack: Stack) -> None:
    result = stack.call(
        "kube",
        {"connection": "kube-dev", "path": "/api/v1/pods?watch=true"},
        token=stack.dev_token,
    )
    assert _error_text(result) == (
        "Error executing tool kube: watch=true streams without end; ask without it"
    )


def test_kube_without_access_to_the_connection_is_refused(stack: Stack) -> None:
    result = stack.call("kube", {"connection": "kube-dev", "path": "/api/v1/pods"})
    assert _error_text(result) == (
        "Error executing tool kube: 403 Forbidden: "
        "Wardgate: user 'bot' has no access to connection 'kube-dev'"
    )


def test_a_held_query_sends_progress_naming_its_review_until_approved(stack: Stack) -> None:
    outcome: dict[str, Any] = {}
    progress: list[str | None] = []
    update = "update customers set name = 'progressed' where id = 8"

    def call() -> None:
        outcome["result"] = stack.call(
            "query", {"connection": "pg-rw", "sql": update}, progress=progress
        )

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    message = wait_for(lambda: list(progress), "a progress notification")[0]
    assert message is not None
    found = re.search(r"statement held for review (rv_[0-9a-f]{12}): ", message)
    assert found is not None, message
    assert message.endswith("; waiting for the decision"), message
    with stack.gw.api(stack.dba_token) as api:
        assert api.post(f"/v1/reviews/{found.group(1)}/approve", json={}).status_code == 200
    thread.join(60)
    result = outcome["result"]
    assert not result.is_error, result
    assert result.structured_content["status"] == "done (the statement returns no rows)"
    with psycopg.connect(stack.gw.pg_conninfo("pg-rw"), autocommit=True) as conn:
        assert conn.execute("select name from customers where id = 8").fetchone() == ("progressed",)


def test_ssh_exec_of_a_held_command_runs_once_another_person_approves_it(
    stack: Stack, tmp_path: Path
) -> None:
    marker = tmp_path / "approved-marker"
    command = f"touch {marker} && echo touched"
    outcome: dict[str, Any] = {}

    def call() -> None:
        outcome["result"] = stack.call(
            "ssh_exec", {"connection": "web-1", "command": command}, token=stack.dev_token
        )

    thread = threading.Thread(target=call, daemon=True)
    thread.start()

    def pending() -> list[dict[str, Any]]:
        with stack.gw.api(stack.dba_token) as api:
            listed = api.get("/v1/reviews", params={"status": "pending"}).json()
        return [r for r in listed if r["requester"] == "erin" and r["text"] == command]

    review = wait_for(pending, "the held command")[0]
    assert not marker.exists()
    with stack.gw.api(stack.dba_token) as api:
        assert api.post(f"/v1/reviews/{review['id']}/approve", json={}).status_code == 200
    thread.join(60)
    out = outcome["result"].structured_content
    assert (out["exit_status"], out["stdout"]) == (0, "touched\n")
    assert f"command held for review {review['id']}" in out["stderr"]
    assert marker.exists()
