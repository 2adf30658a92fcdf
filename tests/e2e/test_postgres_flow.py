"""Cancels and read-ahead through the gateway (issue 14, cause 3).

A cancel returns to the client once the server has acted on it, as directly; a session's
data runs at most a window (shared.tunnel.frames.SESSION_WINDOW) ahead of the side that
reads it, so a client that stops reading stops the server, and a client whose upload the
server refuses hears of it before it has sent much more.
"""

from __future__ import annotations

import os
import select
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from gateway.crypto import SecretBox
from shared.tunnel.frames import SESSION_WINDOW
from tests.fixtures.postgres import PostgresServer
from tests.fixtures.wardgate import ADMIN_TOKEN, GatewayProc, Wardgate, wait_for

pytestmark = pytest.mark.e2e

# ~130 MB of COPY output: far more than every buffer on the way holds (a loopback socket's
# autotuned buffers alone reach several MB).
ROWS = 10_000_000
ROW_BYTES = 12  # on the wire: CopyData header (5) and "1234567\n"
# User-space buffers of the relays on top of the window: the agent's reader (up to 2 x 256
# KiB before it pauses, and the 256 KiB in hand), the gateway's TLS writer; and slack for
# the loopback sockets' autotuning, which differs between hops.
RELAY_SLACK = SESSION_WINDOW + 4 * 1024 * 1024


@dataclass
class Stack:
    gw: GatewayProc
    pg: PostgresServer

    def conninfo(self) -> str:
        params = {
            "host": "127.0.0.1",
            "port": str(self.gw.public_port),
            "dbname": "pg-flow",
            "user": "admin",
            "password": ADMIN_TOKEN,
            "sslmode": "verify-full",
            "sslrootcert": str(self.gw.ca_path),
        }
        return " ".join(f"{k}={v}" for k, v in params.items())

    def admin(self, *sql: str) -> object:
        """Run each statement on the server directly; the first column of the last one's
        first row."""
        with self.pg.connect() as conn:
            for statement in sql:
                cur = conn.execute(statement)
        row = cur.fetchone() if cur.description else None
        return row[0] if row else None


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, postgres_server: PostgresServer
) -> Iterator[Stack]:
    wg = Wardgate(tmp_path_factory.mktemp("pgflow"))
    try:
        gw = wg.gateway(secret_key=SecretBox.generate_key())
        wg.agent(gw, gw.create_agent("default"), wait="default")
        gw.create_connection(
            name="pg-flow",
            type="postgres",
            host=postgres_server.host,
            port=postgres_server.port,
            database=postgres_server.dbname,
            username=postgres_server.user,
            password=postgres_server.password,
        )
        yield Stack(gw, postgres_server)
    finally:
        wg.close()


def test_a_cancel_on_an_idle_connection_never_cancels_the_next_statement(stack: Stack) -> None:
    # cancel_safe() returns once the gateway closes the cancel connection; before the fix it
    # closed before the server had acted, and 1 in 3 of the statements below was cancelled.
    wrongly = 0
    with psycopg.connect(stack.conninfo(), autocommit=True) as conn:
        for _ in range(100):
            conn.cancel_safe()
            try:
                conn.execute("select pg_sleep(0.005)")
            except psycopg.errors.QueryCanceled:
                wrongly += 1
    assert wrongly == 0, f"{wrongly} of 100 statements were cancelled by the cancel before them"


def _stall_then_cancel(stack: Stack, conn: psycopg.Connection[tuple[object, ...]]) -> int:
    """Read one row of a large COPY, stall until the server waits to write, cancel: how many
    rows the server produced (a sequence counts them, whatever the buffers hold)."""
    stack.admin("drop sequence if exists flow_rows", "create sequence flow_rows")
    copy_sql = f"copy (select nextval('flow_rows') from generate_series(1, {ROWS})) to stdout"
    pid = conn.info.backend_pid
    with pytest.raises(psycopg.errors.QueryCanceled), conn.cursor().copy(copy_sql) as copy:
        assert bytes(copy.read()) == b"1\n"
        # Every buffer on the way fills, then the server waits to write.
        wait_for(
            lambda: (
                stack.admin(f"select wait_event from pg_stat_activity where pid = {pid}")
                == "ClientWrite"
            ),
            "the server to wait for the client to read",
        )
        conn.cancel_safe()
        while copy.read():
            pass
    assert conn.execute("select 'still here'").fetchone() == ("still here",)
    produced = stack.admin("select last_value from flow_rows")
    assert isinstance(produced, int)
    return produced


def test_a_one_row_read_of_a_large_copy_that_is_then_cancelled(stack: Stack) -> None:
    with stack.pg.connect() as conn:
        direct = _stall_then_cancel(stack, conn)  # what the socket buffers of one hop hold
    with psycopg.connect(stack.conninfo(), autocommit=True) as conn:
        gated = _stall_then_cancel(stack, conn)
    # Two TCP hops instead of one, plus the session window and the relays' read buffers
    # (RELAY_SLACK). Before the fix gRPC's own windows (megabytes) came on top.
    assert gated <= 2 * direct + RELAY_SLACK // ROW_BYTES, (gated, direct)
    assert gated < ROWS // 4


def _upload_until_refused(conn: psycopg.Connection[tuple[object, ...]]) -> tuple[int, int]:
    """COPY rows whose 20th is bad, as fast as the way takes them, until the server's error
    arrives (a client that reads while it sends): the bytes sent by then, and the client
    socket's send buffer (autotuned) at that point."""
    pgconn = conn.pgconn
    pgconn.send_query(b"copy flow_sink (n) from stdin")
    assert pgconn.get_result().status == psycopg.pq.ExecStatus.COPY_IN  # type: ignore[union-attr]
    pgconn.nonblocking = 1
    chunk = b"1\n" * (32 * 1024)
    sent = 0
    data = b"1\n" * 19 + b"not a number\n"
    with socket.socket(fileno=os.dup(conn.fileno())) as sock:
        while sent < LIMIT:
            if pgconn.put_copy_data(data) == 1:
                sent += len(data)
                data = chunk
            pgconn.flush()
            readable, _, _ = select.select([sock], [sock], [], 10)
            if readable:
                break
        sndbuf = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
    pgconn.nonblocking = 0
    pgconn.put_copy_end()
    while (result := pgconn.get_result()) is not None:
        last = result
    assert last.error_field(psycopg.pq.DiagnosticField.SQLSTATE) == b"22P02"  # the bad row
    return sent, sndbuf


LIMIT = 500 * 1024 * 1024


def test_a_failing_bulk_insert_reaches_the_clients_error_within_the_window(stack: Stack) -> None:
    stack.admin("drop table if exists flow_sink", "create table flow_sink (n int)")
    with stack.pg.connect() as conn:
        direct, _ = _upload_until_refused(conn)
    with psycopg.connect(stack.conninfo(), autocommit=True) as conn:
        sent, sndbuf = _upload_until_refused(conn)
        assert conn.execute("select count(*) from flow_sink").fetchone() == (0,)
    # Before its error arrives, the client fills at most its own send buffer, the gateway's
    # receive buffer (at most tcp_rmem's maximum), the window, and what is on its way to the
    # server (the agent's writer stops at the window: its drain waits for the server).
    rcvbuf = int(Path("/proc/sys/net/ipv4/tcp_rmem").read_text().split()[2])
    assert sent <= direct + sndbuf + rcvbuf + 2 * SESSION_WINDOW, (sent, direct, sndbuf, rcvbuf)
