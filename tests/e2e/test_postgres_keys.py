"""Backend keys through the gateway: the client sees its server's real pid, cancels reach it.

A real gateway, agent and PostgreSQL; psycopg with the libpq 18 of its binary package, which
can ask for protocol 3.2 (longer cancel keys). Raw-wire checks read what the gateway sends.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import pytest

from gateway.crypto import SecretBox
from shared.pgwire.backend import (
    AuthenticationCleartextPassword,
    BackendKeyData,
    NegotiateProtocolVersion,
    ReadyForQuery,
    decode_backend,
)
from shared.pgwire.framing import MessageReader
from shared.pgwire.frontend import password_message
from shared.pgwire.startup import encode_cancel_request, encode_ssl_request, encode_startup
from tests.fixtures.postgres import PostgresServer
from tests.fixtures.wardgate import ADMIN_TOKEN, GatewayProc, Wardgate, wait_for

pytestmark = pytest.mark.e2e

SLEEP = "select pg_sleep(60)"


@dataclass
class Stack:
    gw: GatewayProc
    pg: PostgresServer

    def conninfo(self, **extra: str) -> str:
        return self.gw.pg_conninfo("pg-keys", **extra)


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, postgres_server: PostgresServer
) -> Iterator[Stack]:
    wg = Wardgate(tmp_path_factory.mktemp("pgkeys"))
    try:
        gw = wg.gateway(secret_key=SecretBox.generate_key())
        wg.agent(gw, gw.create_agent("default"), wait="default")
        gw.create_connection(**postgres_server.connection_spec("pg-keys"))
        yield Stack(gw, postgres_server)
    finally:
        wg.close()


def test_the_client_sees_its_servers_backend_pid(stack: Stack) -> None:
    with psycopg.connect(stack.conninfo(), autocommit=True) as conn:
        pid = conn.info.backend_pid
        assert conn.execute("select pg_backend_pid()").fetchone() == (pid,)
        assert stack.pg.activity(pid) is not None  # pg_stat_activity, read directly
        # A notification carries the sender's pid: an application that skips its own
        # notifications compares it with backend_pid.
        conn.execute("listen keys_channel")
        conn.execute("notify keys_channel, 'mine'")
        with psycopg.connect(stack.conninfo(), autocommit=True) as other:
            other.execute("notify keys_channel, 'theirs'")
            other_pid = other.info.backend_pid
        notes = list(conn.notifies(timeout=30, stop_after=2))
        assert [(n.payload, n.pid) for n in notes] == [("mine", pid), ("theirs", other_pid)]


def test_terminating_a_backend_by_the_pid_its_client_was_given(stack: Stack) -> None:
    victim = psycopg.connect(stack.conninfo(), autocommit=True)
    try:
        pid = victim.info.backend_pid
        with psycopg.connect(stack.conninfo(), autocommit=True) as other:
            assert other.execute("select pg_terminate_backend(%s)", (pid,)).fetchone() == (True,)
        wait_for(lambda: stack.pg.activity(pid) is None, "the backend to exit")
        # ...and its client hears of it, as directly (issue 14, cause 1)
        with pytest.raises(psycopg.errors.AdminShutdown):
            victim.execute("select 1")
        assert victim.closed
    finally:
        victim.close()


@pytest.mark.parametrize("protocol", ["3.0", "3.2"])
def test_a_cancel_reaches_the_server_with_either_key_length(stack: Stack, protocol: str) -> None:
    info = stack.conninfo(max_protocol_version=protocol)
    with psycopg.connect(info, autocommit=True) as conn:
        assert conn.pgconn.full_protocol_version == {"3.0": 30000, "3.2": 30002}[protocol]
        raised = stack.pg.interrupt(conn, SLEEP, conn.cancel_safe)
        assert isinstance(raised, psycopg.errors.QueryCanceled), raised
        assert conn.execute("select 'still here'").fetchone() == ("still here",)


def _login(
    stack: Stack, version: tuple[int, int], **params: str
) -> tuple[list[object], socket.socket]:
    """Log in on the raw wire; every message up to ReadyForQuery, and the open socket."""
    ctx = ssl.create_default_context(cafile=str(stack.gw.ca_path))
    raw = socket.create_connection(("127.0.0.1", stack.gw.public_port), timeout=30)
    raw.sendall(encode_ssl_request())
    assert raw.recv(1) == b"S"
    tls = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
    tls.sendall(encode_startup({"user": "admin", "database": "pg-keys", **params}, version))
    frames = MessageReader()
    seen: list[object] = []
    while not seen or not isinstance(seen[-1], ReadyForQuery):
        while (m := frames.next_message()) is None:
            data = tls.recv(65536)
            assert data, f"closed after {seen}"
            frames.feed(data)
        seen.append(decode_backend(m))
        if isinstance(seen[-1], AuthenticationCleartextPassword):
            tls.sendall(password_message(ADMIN_TOKEN.encode()))
    return seen, tls


@pytest.mark.parametrize(
    ("version", "params", "negotiated", "secret"),
    [
        ((3, 0), {}, None, 4),
        ((3, 2), {}, None, 32),
        ((3, 9), {}, NegotiateProtocolVersion(2), 32),
        ((3, 0), {"_pq_.wish": "x"}, NegotiateProtocolVersion(0, ("_pq_.wish",)), 4),
    ],
    ids=["3.0", "3.2", "3.9", "3.0+_pq_"],
)
def test_the_key_length_follows_the_protocol_the_client_asked_for(
    stack: Stack,
    version: tuple[int, int],
    params: dict[str, str],
    negotiated: NegotiateProtocolVersion | None,
    secret: int,
) -> None:
    seen, tls = _login(stack, version, **params)
    with tls:
        negotiations = [m for m in seen if isinstance(m, NegotiateProtocolVersion)]
        assert negotiations == ([negotiated] if negotiated else [])
        keys = [m for m in seen if isinstance(m, BackendKeyData)]
        assert len(keys) == 1 and len(keys[0].secret) == secret
        assert stack.pg.activity(keys[0].pid) is not None


def test_a_wrong_secret_cancels_nothing(stack: Stack) -> None:
    with psycopg.connect(stack.conninfo(), autocommit=True) as conn:

        def forged_then_real_cancel() -> None:
            seen, tls = _login(stack, (3, 0))
            tls.close()
            other_key = next(m for m in seen if isinstance(m, BackendKeyData))
            refused = len(stack.gw.audit("pg.cancel_refused"))
            with socket.create_connection(("127.0.0.1", stack.gw.public_port)) as raw:
                # the victim's real pid with another session's secret
                raw.sendall(encode_cancel_request(conn.info.backend_pid, other_key.secret))
            wait_for(
                lambda: len(stack.gw.audit("pg.cancel_refused")) > refused,
                "the gateway to refuse the forged cancel",
            )
            assert stack.pg.activity(conn.info.backend_pid) == ("active", SLEEP)
            conn.cancel_safe()

        raised = stack.pg.interrupt(conn, SLEEP, forged_then_real_cancel)
        assert isinstance(raised, psycopg.errors.QueryCanceled), raised
