"""The agent's hop to a PostgreSQL server that speaks TLS (the connection's `sslmode`).

A real server with `ssl = on` and a certificate for 127.0.0.1 from a CA of its own; the
agent dials it with the connection's sslmode, as libpq would. The server itself says whether
a backend's connection is encrypted (pg_stat_ssl), now that the client's backend pid is real.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import pytest

from gateway.crypto import SecretBox
from tests.fixtures.postgres import PostgresServer
from tests.fixtures.wardgate import GatewayProc, Wardgate

pytestmark = pytest.mark.e2e


@dataclass
class Stack:
    gw: GatewayProc
    pg: PostgresServer

    def conninfo(self, dbname: str) -> str:
        return self.gw.pg_conninfo(dbname)

    def encrypted(self, pid: int) -> bool | None:
        with self.pg.connect() as admin:
            row = admin.execute("select ssl from pg_stat_ssl where pid = %s", (pid,)).fetchone()
        return row[0] if row else None


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory,
    postgres_tls_server: PostgresServer,
    postgres_server: PostgresServer,
) -> Iterator[Stack]:
    tls_server = postgres_tls_server
    assert tls_server.ca_path is not None
    wg = Wardgate(tmp_path_factory.mktemp("pgtls"))
    try:
        gw = wg.gateway(secret_key=SecretBox.generate_key())
        wg.agent(gw, gw.create_agent("default"), wait="default")
        verify = {"sslmode": "verify-full", "sslrootcert": str(tls_server.ca_path)}
        for name, server, options in [
            ("tls-require", tls_server, {"sslmode": "require"}),
            ("tls-verify", tls_server, verify),
            ("tls-disable", tls_server, {"sslmode": "disable"}),
            ("tls-other-ca", tls_server, {**verify, "sslrootcert": str(gw.ca_path)}),
            ("plain-require", postgres_server, {"sslmode": "require"}),
        ]:
            gw.create_connection(**server.connection_spec(name, options=options))
        yield Stack(gw, tls_server)
    finally:
        wg.close()


@pytest.mark.parametrize(
    ("connection", "encrypted"),
    [("tls-require", True), ("tls-verify", True), ("tls-disable", False)],
)
def test_the_agent_encrypts_as_the_connection_says(
    stack: Stack, connection: str, encrypted: bool
) -> None:
    with psycopg.connect(stack.conninfo(connection), autocommit=True) as conn:
        assert stack.encrypted(conn.info.backend_pid) is encrypted
        assert conn.execute("select 'through ' || %s", [connection]).fetchone() == (
            f"through {connection}",
        )


def test_a_cancel_crosses_the_tls_hop(stack: Stack) -> None:
    with psycopg.connect(stack.conninfo("tls-verify"), autocommit=True) as conn:
        raised = stack.pg.interrupt(conn, "select pg_sleep(60)", conn.cancel_safe)
        assert isinstance(raised, psycopg.errors.QueryCanceled), raised
        assert conn.execute("select 'still here'").fetchone() == ("still here",)


@pytest.mark.parametrize(
    ("connection", "says"),
    [
        ("tls-other-ca", "certificate verify failed"),
        ("plain-require", "the server does not accept TLS (sslmode=require)"),
    ],
)
def test_a_hop_that_cannot_be_secured_is_refused_by_name(
    stack: Stack, connection: str, says: str
) -> None:
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(stack.conninfo(connection))
    # libpq keeps no SQLSTATE for a failed connection: the message is what the user sees
    assert f"connection '{connection}'" in str(info.value) and says in str(info.value)
