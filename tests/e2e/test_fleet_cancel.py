"""PostgreSQL cancels across gateway members: two members over one PostgreSQL store, clients
through a round-robin TCP balancer, so a client's cancel connection lands on the member that
does not serve its session (as it would behind any L4 balancer)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import pytest

from gateway.crypto import SecretBox
from shared.pgwire.startup import encode_cancel_request
from tests.fixtures.balancer import RoundRobin
from tests.fixtures.postgres import PostgresServer
from tests.fixtures.wardgate import GatewayProc, Wardgate, wait_for

pytestmark = pytest.mark.e2e

SLEEP = "select pg_sleep(60)"


@dataclass
class Fleet:
    first: GatewayProc  # the agent is connected here: sessions run on this member
    second: GatewayProc
    target: PostgresServer
    balancer: RoundRobin

    def conninfo(self) -> str:
        return self.first.pg_conninfo("pg-fleet", port=str(self.balancer.port))


@pytest.fixture
def fleet(
    wardgate: Wardgate, postgres_db: PostgresServer, postgres_server: PostgresServer
) -> Iterator[Fleet]:
    shared = {"store": postgres_db.url(), "secret_key": SecretBox.generate_key()}
    first = wardgate.gateway(**shared)
    tls = first.data_dir / "tls"  # one server identity for the fleet, as an operator's files
    identity = {"cert": tls / "gateway.pem", "key": tls / "gateway.key", "ca": tls / "ca.pem"}
    second = wardgate.gateway(**shared, tls={k: str(v) for k, v in identity.items()})
    wardgate.agent(first, first.create_agent("default"), wait="default")
    first.create_connection(**postgres_server.connection_spec("pg-fleet"))
    with RoundRobin([first.public_port, second.public_port]) as balancer:
        yield Fleet(first, second, postgres_server, balancer)


def test_a_cancel_that_lands_on_another_member_reaches_the_server(fleet: Fleet) -> None:
    with psycopg.connect(fleet.conninfo(), autocommit=True) as conn:
        assert fleet.balancer.routed == [fleet.first.public_port]
        raised = fleet.target.interrupt(conn, SLEEP, conn.cancel_safe)
        assert fleet.balancer.routed[-1] == fleet.second.public_port  # the cancel's connection
        assert isinstance(raised, psycopg.errors.QueryCanceled), raised
        assert conn.execute("select 'still here'").fetchone() == ("still here",)
    # One audit log for the fleet: the cancel, recorded for the session, and no refusal.
    (event,) = fleet.first.audit("pg.cancel")
    assert event["data"]["client"].startswith("127.0.0.1")
    assert event["session"], event
    assert not fleet.second.audit("pg.cancel_refused")


def test_cancels_through_the_balancer_never_cancel_the_next_statement(fleet: Fleet) -> None:
    # cancel_safe() returns when the member it landed on closes the cancel connection: only
    # once the member serving the session says the server has acted.
    wrongly = 0
    with psycopg.connect(fleet.conninfo(), autocommit=True) as conn:
        for _ in range(20):
            conn.cancel_safe()
            try:
                conn.execute("select 1")
            except psycopg.errors.QueryCanceled:
                wrongly += 1
    assert wrongly == 0, f"{wrongly} of 20 statements were cancelled by the cancel before them"
    assert len(fleet.first.audit("pg.cancel")) == 20


def test_a_cancel_with_a_key_no_member_holds_is_refused_in_bounded_time(fleet: Fleet) -> None:
    with psycopg.connect(fleet.conninfo(), autocommit=True) as conn:
        pid = conn.info.backend_pid
        raw = socket.create_connection(("127.0.0.1", fleet.second.public_port), timeout=30)
        started = time.monotonic()
        with raw:
            raw.sendall(encode_cancel_request(pid, b"\x00\x01\x02\x03"))  # a guessed secret
            assert raw.recv(1) == b""  # closed, as PostgreSQL closes any cancel connection
        took = time.monotonic() - started
        assert conn.execute("select 'untouched'").fetchone() == ("untouched",)
    print(f"an unknown key was refused after {took:.2f} s")
    wait_for(lambda: fleet.second.audit("pg.cancel_refused"), "the refusal to be audited")
    assert not fleet.first.audit("pg.cancel")
