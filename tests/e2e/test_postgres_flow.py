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
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from gateway.crypto import SecretBox
from shared.tunnel.frames import SESSION_WINDOW
from tests.fixtures.postgres import PostgresServer
from tests.fixtures.wardgate import GatewayProc, Wardgate, wait_for

pytestmark = pytest.mark.e2e

# ~130 MB of COPY output: far more than every buffer on the way holds (a loopback socket's
# autotuned buffers alone reach several MB).
ROWS = 10_000_000
# The relays' own buffers beside the window (0.7-0.9 MB measured): the agent's reader (it
# pauses past 2 x 64 KiB; one read more may land) and the 256 KiB read in hand, the
# gateway's TLS writer, libpq's input buffer; with room for scheduling under load.
RELAY_BUFFERS = 2 * 1024 * 1024


@dataclass
class Stack:
    gw: GatewayProc
    pg: PostgresServer

    def conninfo(self) -> str:
        return self.gw.pg_conninfo("pg-flow")

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
        gw.create_connection(**postgres_server.connection_spec("pg-flow"))
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


def _queued(ports: set[int]) -> int:
    """Bytes in the kernel's queues (received, unread; sent, unacknowledged) of the local TCP
    connections that have an end on one of `ports`: what those hops hold."""
    out = subprocess.run(["ss", "-tnH"], capture_output=True, text=True, check=True).stdout
    total = 0
    for line in out.splitlines():
        _state, recv_q, send_q, local, peer, *_ = line.split()
        if {int(local.rsplit(":", 1)[1]), int(peer.rsplit(":", 1)[1])} & ports:
            total += int(recv_q) + int(send_q)
    return total


def _wire_bytes(rows: int) -> int:
    """The COPY output of rows 1..rows: a CopyData message (5 bytes of header) per row."""
    total, digits, start = 0, 1, 1
    while start <= rows:
        end = min(rows, 10**digits - 1)
        total += (end - start + 1) * (5 + digits + 1)
        start, digits = end + 1, digits + 1
    return total


def test_a_one_row_read_of_a_large_copy_that_is_then_cancelled(stack: Stack) -> None:
    stack.admin("drop sequence if exists flow_rows", "create sequence flow_rows")
    copy_sql = f"copy (select nextval('flow_rows') from generate_series(1, {ROWS})) to stdout"
    hops = {stack.pg.port, stack.gw.public_port}  # agent-server and client-gateway, not the tunnel
    with psycopg.connect(stack.conninfo(), autocommit=True) as conn:
        pid = conn.info.backend_pid

        def settled() -> tuple[int, int] | None:
            """(rows produced, bytes in the hops) once the server waits to write and nothing
            moved since the last look."""
            waiting = stack.admin(f"select wait_event from pg_stat_activity where pid = {pid}")
            now = (stack.admin("select last_value from flow_rows"), _queued(hops))
            previous, looks[0] = looks[0], now
            return now if waiting == "ClientWrite" and now == previous else None  # type: ignore[return-value]

        looks: list[tuple[object, int] | None] = [None]
        with pytest.raises(psycopg.errors.QueryCanceled), conn.cursor().copy(copy_sql) as copy:
            assert bytes(copy.read()) == b"1\n"
            # The client reads nothing more: every buffer on the way fills, then the server
            # waits to write.
            produced, in_hops = wait_for(settled, "the server to wait for the client to read")
            conn.cancel_safe()
            while copy.read():
                pass
        assert conn.execute("select 'still here'").fetchone() == ("still here",)
    assert produced < ROWS // 4  # the server did not finish: the cancel stopped it
    # What gateway, tunnel and agent hold (the client's own read buffer counts here too):
    # at most the window and the relays' read buffers. Before the fix, gRPC's windows
    # (megabytes) held the rest of an 11.9 MB COPY.
    held = _wire_bytes(produced) - in_hops
    assert held <= SESSION_WINDOW + RELAY_BUFFERS, (held, produced, in_hops)


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
