"""Two gateway members over one real PostgreSQL store (docs/fleet.md).

They show one identity (TLS CA, SSH host key, SSH user CA) and list each other; a member
killed with SIGKILL while it serves a psql session is reaped by the other, which ends that
session in the store as "gateway lost" within the bound, and the audit chain still verifies.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from typing import Any

import paramiko
import psycopg
import pytest
import yaml
from psycopg import sql

from gateway.config import FleetConfig
from gateway.crypto import SecretBox
from gateway.fleet.membership import NEEDS_KEY, OTHER_KEY
from gateway.tls import fingerprint
from tests.fixtures.postgres import PostgresServer
from tests.fixtures.wardgate import WARDGATE, GatewayProc, Wardgate, free_port, wait_for

pytestmark = pytest.mark.e2e

APP_PASSWORD = "fleet-app-Pw3"
DEFAULTS = FleetConfig()
# A SIGKILLed member's sessions are closed in the store within this many seconds (the
# figure docs/fleet.md names): its heartbeat ages past the timeout, and the next beat of a
# live member reaps it.
LOST_BOUND = DEFAULTS.member_timeout + DEFAULTS.heartbeat_interval


def _database(server: PostgresServer) -> None:
    with server.connect() as admin:
        admin.execute(sql.SQL("drop database if exists fleetapp"))
        admin.execute(sql.SQL("drop role if exists fleet_app"))
        admin.execute(
            sql.SQL("create role fleet_app login password {}").format(sql.Literal(APP_PASSWORD))
        )
        admin.execute(sql.SQL("create database fleetapp owner fleet_app"))


def _host_key(gw: GatewayProc) -> str:
    """The SSH host key the member presents on its public port, as a client sees it."""
    with socket.create_connection(("127.0.0.1", gw.public_port), timeout=30) as sock:
        transport = paramiko.Transport(sock)
        try:
            transport.start_client(timeout=30)
            key = transport.get_remote_server_key()
            return f"{key.get_name()} {key.get_base64()}"
        finally:
            transport.close()


def _members(wardgate: Wardgate, gw: GatewayProc) -> dict[str, dict[str, Any]]:
    listed = wardgate.cli(gw, "members", "list", "-o", "json")
    assert listed.returncode == 0, listed.stderr
    return {m["id"]: m for m in json.loads(listed.stdout)}


def test_members_share_one_identity_and_a_killed_members_sessions_end_as_gateway_lost(
    wardgate: Wardgate, postgres_server: PostgresServer, postgres_db: PostgresServer
) -> None:
    _database(postgres_server)
    shared = {"store": postgres_db.url(), "secret_key": SecretBox.generate_key()}
    survivor = wardgate.gateway(**shared)
    victim = wardgate.gateway(**shared)

    # One identity: the same CA (each member's own data directory), host key and user CA.
    assert victim.ca_path.read_bytes() == survivor.ca_path.read_bytes()
    with survivor.api() as a, victim.api() as b:
        assert fingerprint(a.get("/v1/ca.pem").content) == fingerprint(b.get("/v1/ca.pem").content)
        assert a.get("/v1/ssh/user-ca").json() == b.get("/v1/ssh/user-ca").json()
    assert _host_key(survivor) == _host_key(victim)

    # Both are members; each list marks the member that answered.
    table = wardgate.cli(survivor, "members", "list")
    assert table.returncode == 0, table.stderr
    assert table.stdout.split()[:8] == [
        "ID",
        "STATE",
        "PUBLIC",
        "AGENTS",
        "VERSION",
        "STARTED",
        "HEARTBEAT",
        "GONE",
    ]
    members = _members(wardgate, survivor)
    assert [m["state"] for m in members.values()] == ["live", "live"]
    [me] = [m for m in members.values() if m["self"]]
    assert me["public_address"] == f"127.0.0.1:{survivor.public_port}"
    assert table.stdout.count(" live ") == 2 and f"{me['id']} (this)" in table.stdout
    [victim_id] = [i for i in members if i != me["id"]]
    assert _members(wardgate, victim)[victim_id]["self"] is True

    # A psql session through the victim (the agent is connected to it).
    wardgate.agent(victim, victim.create_agent("default"), wait="default")
    victim.create_connection(
        name="pg-fleet",
        type="postgres",
        host="127.0.0.1",
        port=postgres_server.port,
        database="fleetapp",
        username="fleet_app",
        password=APP_PASSWORD,
    )
    client = psycopg.connect(victim.pg_conninfo("pg-fleet"), autocommit=True)
    try:
        assert client.execute("select 1").fetchone() == (1,)
        [opened] = survivor.audit("session.open")
        session_id = opened["session"]
        with survivor.api() as api:
            row = api.get(f"/v1/sessions/{session_id}").json()
        assert (row["status"], row["member"]) == ("open", victim_id)

        victim.kill()
        killed = time.monotonic()

        def closed() -> dict[str, Any] | None:
            with survivor.api() as api:
                found: dict[str, Any] = api.get(f"/v1/sessions/{session_id}").json()
            return found if found["ended_at"] else None

        ended = wait_for(closed, "the survivor to end the lost member's session", LOST_BOUND + 3)
        took = time.monotonic() - killed
    finally:
        client.close()
    assert (ended["status"], ended["error"]) == ("failed", "gateway lost")
    assert took <= LOST_BOUND + 3, took
    gone = _members(wardgate, survivor)[victim_id]
    assert (gone["state"], gone["gone_reason"]) == ("gone", "heartbeat lost")
    [lost] = survivor.audit("member.lost")
    assert lost["data"]["member"] == victim_id and lost["data"]["sessions"] == 1
    assert lost["data"]["by"] == me["id"]
    closes = [e for e in survivor.audit("session.close") if e["session"] == session_id]
    assert [e["data"]["error"] for e in closes] == ["gateway lost"]

    verify = wardgate.cli(survivor, "audit", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert verify.stdout.startswith("audit log intact"), verify.stdout


def _start(wardgate: Wardgate, **config: Any) -> subprocess.CompletedProcess[str]:
    """Run a gateway that is expected to refuse to start; its output and exit code."""
    data_dir = wardgate.tmp / f"refused{free_port()}"
    data_dir.mkdir()
    config = {
        "listen": f"127.0.0.1:{free_port()}",
        "agent_listen": f"127.0.0.1:{free_port()}",
        "data_dir": str(data_dir),
        **config,
    }
    path = data_dir / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    return subprocess.run(
        [*WARDGATE, "gateway", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_shared_store_needs_the_fleets_secret_key(
    wardgate: Wardgate, postgres_db: PostgresServer
) -> None:
    without = _start(wardgate, store=postgres_db.url())
    assert without.returncode == 2, without.stderr
    assert without.stderr.strip().splitlines()[-1] == f"Error: {NEEDS_KEY}"
    assert "Traceback" not in without.stderr

    wardgate.gateway(store=postgres_db.url(), secret_key=SecretBox.generate_key())
    other = _start(wardgate, store=postgres_db.url(), secret_key=SecretBox.generate_key())
    assert other.returncode == 2, other.stderr
    assert other.stderr.strip().splitlines()[-1] == f"Error: {OTHER_KEY}"
