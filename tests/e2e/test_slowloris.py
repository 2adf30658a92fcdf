"""A slowloris on the public port of a real gateway: 300 connections from one address send
three bytes that name no protocol yet, or trickle the start of SSH, TLS and PostgreSQL
handshakes, a byte every half second, never finishing.

A new client from another address still connects and authenticates (psql and psycopg through
gateway and agent to a real PostgreSQL), the 301st connection from the trickling address is
refused at accept, and the gateway closes every trickling connection at its deadline: the
partial ones at `sniff_timeout`, the TLS ones at `tls_handshake_timeout`, the SSH and
PostgreSQL ones at `login_timeout`.
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from bench.slowloris import slowloris
from gateway.crypto import SecretBox
from tests.fixtures.postgres import PostgresServer
from tests.fixtures.wardgate import GatewayProc, Wardgate, wait_for

pytestmark = pytest.mark.e2e

APP_PASSWORD = "app-secret-slow-7"
PER_ADDRESS = 300
# Far longer than a client needs to log in here (well under a second): the trickling
# connections are still open while the new client works, and closed later by these.
SNIFF_DEADLINE = 15.0
TLS_DEADLINE = 20.0
LOGIN_DEADLINE = 25.0  # before the PostgreSQL door's own 30 s startup timeout
TRICKLER = "127.0.0.2"  # the slowloris's address; clients come from 127.0.0.1


@pytest.fixture(scope="module")
def gw(
    tmp_path_factory: pytest.TempPathFactory, postgres_server: PostgresServer
) -> Iterator[GatewayProc]:
    with postgres_server.connect() as admin:
        admin.execute(sql.SQL("drop database if exists slow"))
        admin.execute(sql.SQL("drop role if exists slow_rw"))
        admin.execute(
            sql.SQL("create role slow_rw login password {}").format(sql.Literal(APP_PASSWORD))
        )
        admin.execute(sql.SQL("create database slow owner slow_rw"))
    wg = Wardgate(tmp_path_factory.mktemp("slowloris"))
    try:
        gw = wg.gateway(
            secret_key=SecretBox.generate_key(),
            frontdoor={
                "max_unauthenticated_per_address": PER_ADDRESS,
                "sniff_timeout": SNIFF_DEADLINE,
                "tls_handshake_timeout": TLS_DEADLINE,
                "login_timeout": LOGIN_DEADLINE,
            },
        )
        wg.agent(gw, gw.create_agent("default"), wait="default")
        gw.create_connection(
            name="pg-slow",
            type="postgres",
            host="127.0.0.1",
            port=postgres_server.port,
            database="slow",
            username="slow_rw",
            password=APP_PASSWORD,
        )
        yield gw
    finally:
        wg.close()


def frontdoor_metrics(gw: GatewayProc) -> dict[str, float]:
    with gw.api() as api:
        answer = api.get("/v1/metrics")
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = {}
    for line in answer.text.splitlines():
        name, _, value = line.rpartition(" ")
        if name.startswith("wardgate_frontdoor_"):
            samples[name.removeprefix("wardgate_frontdoor_")] = float(value)
    return samples


def psql(gw: GatewayProc, query: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["psql", gw.pg_conninfo("pg-slow"), "-X", "-Atc", query],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def closed_at_once(source: str, port: int) -> bool:
    """True when the gateway closes a new connection from `source` before it sends a byte."""
    with socket.socket() as s:
        s.bind((source, 0))
        s.settimeout(30)
        s.connect(("127.0.0.1", port))
        try:
            return s.recv(1) == b""
        except ConnectionResetError:
            return True


def test_a_new_client_gets_in_through_a_slowloris_which_is_closed_at_its_deadlines(
    gw: GatewayProc,
) -> None:
    with slowloris(gw.public_port, PER_ADDRESS, sources=[TRICKLER]) as loris:
        wait_for(
            lambda: frontdoor_metrics(gw)["unauthenticated_connections"] == PER_ADDRESS,
            "the gateway to hold the slowloris's connections",
        )
        # the 301st from the trickling address: closed at accept, before the client says a word
        assert closed_at_once(TRICKLER, gw.public_port)
        assert frontdoor_metrics(gw)['refused_total{reason="per_address"}'] == 1

        # a new client from another address connects, authenticates and works meanwhile
        out = psql(gw, "select 'in through the slowloris'")
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "in through the slowloris"
        with psycopg.connect(gw.pg_conninfo("pg-slow"), connect_timeout=60) as conn:
            assert conn.execute("select current_user").fetchone() == ("slow_rw",)
        assert loris.open == PER_ADDRESS  # all still trickling while it did

        wait_for(
            lambda: loris.open == 0,
            "the gateway to close every trickling connection",
            timeout=LOGIN_DEADLINE + 60,
        )
        assert loris.closed == {"partial": 75, "ssh": 75, "tls": 75, "postgres": 75}

    # closed for the client at once; each handler then unwinds (SSH's paramiko threads too)
    wait_for(
        lambda: frontdoor_metrics(gw)["unauthenticated_connections"] == 0,
        "every closed connection's place given back",
    )
    counts = frontdoor_metrics(gw)
    assert counts['deadline_closed_total{phase="sniff"}'] == 75
    assert counts['deadline_closed_total{phase="tls"}'] == 75
    assert counts['deadline_closed_total{phase="login"}'] == 150  # SSH and PostgreSQL
    log = gw.log(tail=100_000)
    assert log.count(f"refused a connection from {TRICKLER}") == 1, log[-5000:]
    assert "Error reading SSH protocol banner" not in log  # audited, not a traceback each
    # 300 connections closed at a deadline, a handful of lines
    assert 1 <= log.count("closed an unauthenticated connection") < 10


def test_the_metrics_are_for_administrators(gw: GatewayProc) -> None:
    with gw.api(token="wgt_not-a-valid-credential-0123456789abcdef") as api:
        assert api.get("/v1/metrics").status_code == 401
    # the admin's; this request's own connection counts no more once its request arrived
    assert frontdoor_metrics(gw)["unauthenticated_connections"] == 0
    out = psql(gw, "select 1")
    assert out.returncode == 0, out.stderr
