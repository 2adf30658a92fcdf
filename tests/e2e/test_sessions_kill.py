"""`wardgate sessions kill`: an administrator ends one live session, wherever it runs.

One gateway over SQLite (no fleet bus), and two members over one PostgreSQL store where the
session runs on the first and the kill is sent to the second's API. Each client is a real
psycopg session through the gateway; the CLI runs as a subprocess.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import count
from typing import Any

import psycopg
import pytest

from gateway.crypto import SecretBox
from gateway.fleet.terminate import ANSWER_TIMEOUT
from tests.fixtures.postgres import PostgresServer, closed_by_gateway, notices_of
from tests.fixtures.wardgate import GatewayProc, Wardgate, wait_for

pytestmark = pytest.mark.e2e

CONNECTION = "pg-kill"
_marks = count(1)


@dataclass
class Live:
    """A psycopg session through a gateway, and what it was told when it ended."""

    conn: psycopg.Connection[Any]
    session_id: str
    notices: list[tuple[str | None, str | None]]


def _open(gw: GatewayProc) -> Live:
    conn = psycopg.connect(gw.pg_conninfo(CONNECTION), autocommit=True)
    notices = notices_of(conn)
    mark = f"kill-me-{next(_marks)}"
    conn.execute(f"select '{mark}'")
    [event] = [e for e in gw.audit("pg.statement") if mark in e["data"]["text"]]
    return Live(conn, str(event["session"]), notices)


def _session(gw: GatewayProc, session_id: str) -> dict[str, Any]:
    with gw.api() as api:
        found: dict[str, Any] = api.get(f"/v1/sessions/{session_id}").json()
    return found


def _terminated(gw: GatewayProc, session_id: str) -> dict[str, Any]:
    [event] = [e for e in gw.audit("session.terminated") if e["session"] == session_id]
    return event


@dataclass
class Single:
    wardgate: Wardgate
    gw: GatewayProc  # over SQLite: one member, no fleet bus

    def kill(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.wardgate.cli(self.gw, "sessions", "kill", *args)


@pytest.fixture(scope="module")
def single(
    tmp_path_factory: pytest.TempPathFactory, postgres_server: PostgresServer
) -> Iterator[Single]:
    wardgate = Wardgate(tmp_path_factory.mktemp("kill_single"))
    try:
        gw = wardgate.gateway(secret_key=SecretBox.generate_key(), identity={"local_users": True})
        wardgate.agent(gw, gw.create_agent("default"), wait="default")
        gw.create_connection(**postgres_server.connection_spec(CONNECTION))
        yield Single(wardgate, gw)
    finally:
        wardgate.close()


def test_kill_ends_a_postgres_session_with_the_reason_and_audits_who(single: Single) -> None:
    live = _open(single.gw)
    try:
        done = single.kill(live.session_id, "--reason", "maintenance window")
        assert done.returncode == 0, done.stderr
        member = _session(single.gw, live.session_id)["member"]
        assert done.stdout == f"session {live.session_id} terminated (on member {member})\n"
        wait_for(lambda: closed_by_gateway(live.conn), "the session to be ended")
    finally:
        live.conn.close()
    said = "terminated by an administrator: maintenance window"
    assert live.notices == [("08006", f"connection {CONNECTION!r}: session ended: {said}")]
    event = _terminated(single.gw, live.session_id)
    assert event["data"]["by"] == "admin"
    assert event["data"]["reason"] == said
    ended = wait_for(
        lambda: (s := _session(single.gw, live.session_id))["ended_at"] and s,
        "the session's end to be recorded",
    )
    assert ended["status"] == "failed"
    assert said in ended["error"]


def test_kill_of_an_unknown_session_is_a_404_and_one_line(single: Single) -> None:
    with single.gw.api() as api:
        answer = api.post("/v1/sessions/no-such-session/terminate")
    assert answer.status_code == 404
    assert answer.json()["detail"] == "session 'no-such-session' does not exist"
    done = single.kill("no-such-session")
    assert done.returncode == 1
    assert done.stderr == (
        "Error: gateway answered 404: session 'no-such-session' does not exist\n"
    )


def test_kill_of_an_ended_session_is_a_409_saying_when_and_why(single: Single) -> None:
    live = _open(single.gw)
    live.conn.close()
    wait_for(lambda: _session(single.gw, live.session_id)["ended_at"], "the session to end")
    with single.gw.api() as api:
        answer = api.post(f"/v1/sessions/{live.session_id}/terminate", json={"reason": "late"})
    assert answer.status_code == 409
    ended_at = _session(single.gw, live.session_id)["ended_at"][:19]  # to the second
    assert answer.json()["detail"] == (
        f"session {live.session_id!r} already ended at {ended_at}+00:00 (closed)"
    )
    done = single.kill(live.session_id)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "already ended at" in done.stderr
    assert not [e for e in single.gw.audit("session.terminated") if e["session"] == live.session_id]


def test_kill_needs_an_administrator(single: Single) -> None:
    token = single.gw.local_login("kill-nonadmin", groups=[])
    live = _open(single.gw)
    try:
        with single.gw.api(token) as api:
            answer = api.post(f"/v1/sessions/{live.session_id}/terminate")
        assert answer.status_code == 403
        assert live.conn.execute("select 'still here'").fetchone() == ("still here",)
    finally:
        live.conn.close()


# ---- two members over one PostgreSQL store -----------------------------------------------


def _member_id(gw: GatewayProc) -> str:
    with gw.api() as api:
        return str(next(m["id"] for m in api.get("/v1/members").json() if m["self"]))


@dataclass
class Fleet:
    wardgate: Wardgate
    first: GatewayProc  # the sessions of these tests run here
    second: GatewayProc  # the kills are sent here


@pytest.fixture(scope="module")
def fleet(
    tmp_path_factory: pytest.TempPathFactory, postgres_server: PostgresServer
) -> Iterator[Fleet]:
    postgres_server.drop_database("kill_store")
    store = postgres_server.create_database("kill_store")
    wardgate = Wardgate(tmp_path_factory.mktemp("kill_fleet"))
    try:
        shared = {
            "store": store.url(),
            "secret_key": SecretBox.generate_key(),
            # A paused member's heartbeat is stale (over 2 beats) once a kill's answer is
            # overdue (3 s), and it is not reaped before it resumes.
            "fleet": {"heartbeat_interval": 0.5, "member_timeout": 20.0},
        }
        first, second = wardgate.gateway(**shared), wardgate.gateway(**shared)
        wardgate.agent(first, first.create_agent("default"), wait="default")
        first.create_connection(**postgres_server.connection_spec(CONNECTION))
        yield Fleet(wardgate, first, second)
    finally:
        wardgate.close()
        postgres_server.drop_database("kill_store")


def test_a_kill_sent_to_another_member_ends_the_session_where_it_runs(fleet: Fleet) -> None:
    live = _open(fleet.first)
    try:
        holder = _session(fleet.first, live.session_id)["member"]
        assert holder == _member_id(fleet.first) != _member_id(fleet.second)
        done = fleet.wardgate.cli(
            fleet.second, "sessions", "kill", live.session_id, "--reason", "incident", "-o", "json"
        )
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == {
            "terminated": True,
            "session": live.session_id,
            "member": holder,
            "reason": "terminated by an administrator: incident",
        }
        wait_for(lambda: closed_by_gateway(live.conn), "the session to be ended")
    finally:
        live.conn.close()
    said = "terminated by an administrator: incident"
    assert live.notices == [("08006", f"connection {CONNECTION!r}: session ended: {said}")]
    event = _terminated(fleet.second, live.session_id)  # one audit log for the fleet
    assert event["data"]["by"] == "admin"


def test_a_kill_for_a_silent_member_says_the_sweep_will_close_it(fleet: Fleet) -> None:
    live = _open(fleet.first)
    holder = _member_id(fleet.first)
    try:
        os.kill(fleet.first.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            done = fleet.wardgate.cli(fleet.second, "sessions", "kill", live.session_id)
            took = time.monotonic() - started
        finally:
            os.kill(fleet.first.pid, signal.SIGCONT)
        assert done.returncode == 1
        [line] = done.stderr.splitlines()
        assert line.startswith(
            f"Error: gateway answered 503: member {holder}, which holds session "
            f"{live.session_id!r}, does not answer (last heartbeat "
        ), line
        assert "the fleet's lost-member sweep closes the session within " in line
        assert took < ANSWER_TIMEOUT + 3, took
    finally:
        live.conn.close()
