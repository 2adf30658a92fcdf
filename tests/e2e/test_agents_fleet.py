"""An agent on every member of a fleet: two gateway processes over one PostgreSQL store,
one agent whose key names only member 1.

The agent learns member 2 from member 1's Welcome (each member lists the other as a
configured peer, `fleet.peers`) and keeps a connection to each, so sessions that land on
member 2 find it; member 2 killed and started again on the same ports gets the agent back
within RECONNECT_CAP seconds of answering again, without the agent restarting.

Member 2 listens for agents on 127.0.0.2, a name its certificate (member 1's, for
127.0.0.1 and localhost) does not hold: the agent verifies it for the key's host instead.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import pytest

from agent.app import RECONNECT_CAP
from gateway.crypto import SecretBox
from tests.fixtures.postgres import PostgresServer
from tests.fixtures.wardgate import GatewayProc, Proc, Wardgate, free_port, wait_for

pytestmark = pytest.mark.e2e

# Slack over RECONNECT_CAP for one connection attempt (TLS, Hello, Welcome) on a loaded
# two-core CI machine.
ATTEMPT_SLACK = 3.0
MEMBER_TWO_HOST = "127.0.0.2"


@dataclass
class Fleet:
    one: GatewayProc
    two: GatewayProc
    agent: Proc


@pytest.fixture
def fleet(
    wardgate: Wardgate, postgres_db: PostgresServer, postgres_server: PostgresServer
) -> Iterator[Fleet]:
    secret_key = SecretBox.generate_key()
    port_two = free_port()
    one = wardgate.gateway(
        store=postgres_db.url(),
        secret_key=secret_key,
        fleet={"peers": [f"{MEMBER_TWO_HOST}:{port_two}"]},
    )
    # Until the fleet's identity lives in the store, member 2 serves member 1's CA and cert.
    two = wardgate.member(
        one,
        port_two,
        store=postgres_db.url(),
        secret_key=secret_key,
        agent_listen=f"{MEMBER_TWO_HOST}:{port_two}",
        fleet={"peers": [f"127.0.0.1:{one.agent_port}"]},
    )
    postgres_server.drop_database("fleet_target")
    target = postgres_server.create_database("fleet_target")
    one.create_connection(**target.connection_spec("pg-fleet"))
    key = one.create_agent("default")
    assert f"@127.0.0.1:{one.agent_port}" in key  # the key names member 1 only
    agent = wardgate.agent(one, key, wait="default")
    yield Fleet(one, two, agent)
    postgres_server.drop_database("fleet_target")


def select_one(gw: GatewayProc) -> int:
    with psycopg.connect(gw.pg_conninfo("pg-fleet"), connect_timeout=10) as conn:
        row = conn.execute("select 1").fetchone()
    assert row is not None
    return int(row[0])


def test_sessions_on_the_member_the_key_does_not_name_reach_the_agent(fleet: Fleet) -> None:
    fleet.two.wait_agent("default")
    assert [select_one(gw) for gw in (fleet.one, fleet.two) for _ in range(3)] == [1] * 6
    agent_log = fleet.agent.log()
    assert f"connected to {MEMBER_TWO_HOST}:{fleet.two.agent_port}" in agent_log


def test_a_restarted_member_gets_the_agent_back_within_seconds(fleet: Fleet) -> None:
    fleet.two.wait_agent("default")
    agent_pid = fleet.agent.pid
    with psycopg.connect(fleet.one.pg_conninfo("pg-fleet"), autocommit=True) as held:
        held.execute("select 1")

        fleet.two.kill()
        fleet.two.start()
        fleet.two.wait_ready()
        answering = time.monotonic()
        fleet.two.wait_agent("default")
        back_after = time.monotonic() - answering

        # The session held on member 1 never noticed.
        assert held.execute("select 2").fetchone() == (2,)
    assert back_after <= RECONNECT_CAP + ATTEMPT_SLACK, f"agent back after {back_after:.1f}s"
    assert fleet.agent.alive() and fleet.agent.pid == agent_pid  # not restarted
    wait_for(lambda: select_one(fleet.two) == 1, "a session on the restarted member")


def test_an_agent_that_came_in_by_another_name_keeps_one_connection_per_member(
    wardgate: Wardgate, fleet: Fleet
) -> None:
    """A key naming a balanced name (here `localhost`, which reaches member 1): the
    connection through it stands in for member 1's own loop, so neither member sees the
    agent twice, and the same process never replaces its own connections back and forth."""
    key = fleet.one.create_agent("balanced").replace("@127.0.0.1:", "@localhost:")
    agent = wardgate.agent(fleet.one, key, wait="balanced")
    fleet.two.wait_agent("balanced")

    def connects() -> int:
        return sum(e["actor"] == "balanced" for e in fleet.one.audit("agent.connected"))

    assert connects() == 2
    deadline = time.monotonic() + 3.0  # three ping intervals
    while time.monotonic() < deadline:
        assert connects() == 2, agent.log()
        time.sleep(0.2)
    log = agent.log()
    assert f"connected to localhost:{fleet.one.agent_port} (member 127.0.0.1:" in log
    assert f"connected to 127.0.0.1:{fleet.one.agent_port}" not in log
    assert f"connected to {MEMBER_TWO_HOST}:{fleet.two.agent_port}" in log
