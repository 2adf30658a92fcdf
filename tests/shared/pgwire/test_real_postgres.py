"""The codec against a real PostgreSQL: startup, SCRAM, simple and extended queries, COPY,
errors and cancellation, over a plain blocking socket.

The driver below is the thinnest possible: sockets in the test, every byte produced and
consumed by shared.pgwire. If the server accepts what we encode and we decode what it sends,
the codec agrees with PostgreSQL, not only with itself.
"""

from __future__ import annotations

import secrets
import socket
from collections.abc import Iterator

import pytest
from psycopg import sql

from shared.pgwire import backend as be
from shared.pgwire import frontend as fe
from shared.pgwire.auth import ScramSha256Client
from shared.pgwire.framing import MessageReader
from shared.pgwire.startup import encode_cancel_request, encode_ssl_request, encode_startup
from tests.fixtures.postgres import PostgresServer

TIMEOUT = 10.0
INT4_OID, TEXT_OID = 23, 25


class WireClient:
    """A blocking socket whose every byte goes through the sans-I/O codec."""

    def __init__(self, server: PostgresServer) -> None:
        self.server = server
        self.sock = socket.create_connection((server.host, server.port), timeout=TIMEOUT)
        self.reader = MessageReader()
        self.key: be.BackendKeyData | None = None
        self.parameters: dict[str, str] = {}

    def send(self, *messages: bytes) -> None:
        self.sock.sendall(b"".join(messages))

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        self.reader.feed(chunk)

    def receive(self) -> be.BackendMessage:
        while (message := self.reader.next_message()) is None:
            self._fill()
        return be.decode_backend(message)

    def receive_byte(self) -> bytes:
        while (byte := self.reader.next_byte()) is None:
            self._fill()
        return byte

    def until_ready(self) -> list[be.BackendMessage]:
        """Everything up to and including ReadyForQuery."""
        messages = [self.receive()]
        while not isinstance(messages[-1], be.ReadyForQuery):
            messages.append(self.receive())
        return messages

    def login(self, user: str, password: str, dbname: str) -> None:
        self.send(encode_startup({"user": user, "database": dbname, "application_name": "pgwire"}))
        request = self.receive()
        assert isinstance(request, be.AuthenticationSASL)
        scram = ScramSha256Client(password.encode(), request.mechanisms)
        self.send(fe.SASLInitialResponse(scram.mechanism, scram.client_first()).encode())
        server_first = self.receive()
        assert isinstance(server_first, be.AuthenticationSASLContinue)
        self.send(fe.SASLResponse(scram.client_final(server_first.data)).encode())
        server_final = self.receive()
        assert isinstance(server_final, be.AuthenticationSASLFinal)
        scram.verify_server_final(server_final.data)
        assert scram.done
        assert self.receive() == be.AuthenticationOk()
        for message in self.until_ready():
            if isinstance(message, be.ParameterStatus):
                self.parameters[message.name] = message.value
            elif isinstance(message, be.BackendKeyData):
                self.key = message
            else:
                assert message == be.ReadyForQuery("I")

    def close(self) -> None:
        try:
            self.send(fe.Terminate().encode())
        finally:
            self.sock.close()


@pytest.fixture
def conn(postgres_server: PostgresServer) -> Iterator[WireClient]:
    client = WireClient(postgres_server)
    client.login(postgres_server.user, postgres_server.password, postgres_server.dbname)
    yield client
    client.close()


def test_login_reports_parameters_and_a_cancel_key(conn: WireClient) -> None:
    assert conn.parameters["client_encoding"] == "UTF8"
    assert conn.parameters["application_name"] == "pgwire"
    assert "server_version" in conn.parameters
    assert conn.key is not None
    assert conn.key.pid > 0


def test_simple_query(conn: WireClient) -> None:
    conn.send(fe.Query("select 1 as x").encode())
    description, row, complete, ready = conn.until_ready()
    assert isinstance(description, be.RowDescription)
    (field,) = description.fields
    assert (field.name, field.type_oid, field.type_size, field.format) == ("x", INT4_OID, 4, 0)
    assert row == be.DataRow((b"1",))
    assert complete == be.CommandComplete("SELECT 1")
    assert isinstance(complete, be.CommandComplete)
    assert complete.rows == 1
    assert ready == be.ReadyForQuery("I")


def test_extended_query_with_a_null_parameter(conn: WireClient) -> None:
    conn.send(
        fe.Parse("", "select $1::int4 as a, $2::text as b, ''::text as c").encode(),
        fe.Bind("", "", (), (b"42", None), ()).encode(),
        fe.Describe("P").encode(),
        fe.Execute().encode(),
        fe.Sync().encode(),
    )
    messages = conn.until_ready()
    assert messages[:2] == [be.ParseComplete(), be.BindComplete()]
    description = messages[2]
    assert isinstance(description, be.RowDescription)
    assert [(f.name, f.type_oid) for f in description.fields] == [
        ("a", INT4_OID),
        ("b", TEXT_OID),
        ("c", TEXT_OID),
    ]
    assert messages[3:] == [
        be.DataRow((b"42", None, b"")),  # NULL and the empty string stay distinct
        be.CommandComplete("SELECT 1"),
        be.ReadyForQuery("I"),
    ]


def test_prepared_statement_parameter_types_and_portal_suspension(conn: WireClient) -> None:
    conn.send(
        fe.Parse("s1", "select generate_series(1, $1)", (INT4_OID,)).encode(),
        fe.Describe("S", "s1").encode(),
        fe.Bind("p1", "s1", (1,), (b"\0\0\0\x03",), (0,)).encode(),  # binary int4 3
        fe.Execute("p1", 2).encode(),
        fe.Execute("p1", 0).encode(),
        fe.Close("S", "s1").encode(),
        fe.Sync().encode(),
    )
    messages = conn.until_ready()
    assert messages[0] == be.ParseComplete()
    assert messages[1] == be.ParameterDescription((INT4_OID,))
    assert isinstance(messages[2], be.RowDescription)
    assert messages[3:] == [
        be.BindComplete(),
        be.DataRow((b"1",)),
        be.DataRow((b"2",)),
        be.PortalSuspended(),
        be.DataRow((b"3",)),
        be.CommandComplete("SELECT 1"),
        be.CloseComplete(),
        be.ReadyForQuery("I"),
    ]


def test_error_then_recovery(conn: WireClient) -> None:
    conn.send(fe.Query("select * from no_such_table").encode())
    error, ready = conn.until_ready()
    assert isinstance(error, be.ErrorResponse)
    assert (error.severity, error.sqlstate) == ("ERROR", "42P01")
    assert error.message is not None
    assert "no_such_table" in error.message
    assert ready == be.ReadyForQuery("I")

    conn.send(fe.Query("").encode())
    assert conn.until_ready() == [be.EmptyQueryResponse(), be.ReadyForQuery("I")]


def test_transaction_status_and_notices(conn: WireClient) -> None:
    conn.send(fe.Query("begin; do $$ begin raise notice 'hello'; end $$").encode())
    messages = conn.until_ready()
    assert messages[0] == be.CommandComplete("BEGIN")
    notice = messages[1]
    assert isinstance(notice, be.NoticeResponse)
    assert (notice.severity, notice.sqlstate, notice.message) == ("NOTICE", "00000", "hello")
    assert messages[2:] == [be.CommandComplete("DO"), be.ReadyForQuery("T")]
    conn.send(fe.Query("select 1/0").encode())
    assert isinstance(conn.until_ready()[-1], be.ReadyForQuery)
    conn.send(fe.Query("select 1").encode())
    error, ready = conn.until_ready()
    assert isinstance(error, be.ErrorResponse)
    assert error.sqlstate == "25P02"  # in failed transaction
    assert ready == be.ReadyForQuery("E")
    conn.send(fe.Query("rollback").encode())
    assert conn.until_ready() == [be.CommandComplete("ROLLBACK"), be.ReadyForQuery("I")]


def test_copy_out_and_in(conn: WireClient) -> None:
    conn.send(fe.Query("copy (select generate_series(1, 3)) to stdout").encode())
    messages = conn.until_ready()
    assert messages == [
        be.CopyOutResponse(0, (0,)),
        fe.CopyData(b"1\n"),
        fe.CopyData(b"2\n"),
        fe.CopyData(b"3\n"),
        fe.CopyDone(),
        be.CommandComplete("COPY 3"),
        be.ReadyForQuery("I"),
    ]

    conn.send(fe.Query("create temp table t (a int, b text); copy t from stdin").encode())
    assert conn.receive() == be.CommandComplete("CREATE TABLE")
    assert conn.receive() == be.CopyInResponse(0, (0, 0))
    conn.send(
        fe.CopyData(b"1\tone\n").encode(), fe.CopyData(b"2\t\\N\n").encode(), fe.CopyDone().encode()
    )
    assert conn.until_ready() == [be.CommandComplete("COPY 2"), be.ReadyForQuery("I")]
    conn.send(fe.Query("select b from t order by a").encode())
    rows = [m for m in conn.until_ready() if isinstance(m, be.DataRow)]
    assert rows == [be.DataRow((b"one",)), be.DataRow((None,))]


def test_cancel_request(conn: WireClient, postgres_server: PostgresServer) -> None:
    assert conn.key is not None
    conn.send(fe.Query("select pg_sleep(30)").encode())
    with socket.create_connection(
        (postgres_server.host, postgres_server.port), timeout=TIMEOUT
    ) as cancel:
        cancel.sendall(encode_cancel_request(conn.key.pid, conn.key.secret))
        assert cancel.recv(1) == b""  # the server answers a cancel by closing
    messages = conn.until_ready()
    errors = [m for m in messages if isinstance(m, be.ErrorResponse)]
    assert [e.sqlstate for e in errors] == ["57014"]  # query_canceled


def test_ssl_request_answered_no_then_startup(postgres_server: PostgresServer) -> None:
    client = WireClient(postgres_server)
    try:
        client.send(encode_ssl_request())
        assert client.receive_byte() == b"N"  # the test server has no TLS
        assert client.reader.buffered == 0
        client.login(postgres_server.user, postgres_server.password, postgres_server.dbname)
    finally:
        client.close()


def test_wrong_password_is_a_fatal_28p01(postgres_server: PostgresServer) -> None:
    client = WireClient(postgres_server)
    try:
        client.send(encode_startup({"user": postgres_server.user}))
        request = client.receive()
        assert isinstance(request, be.AuthenticationSASL)
        assert request.mechanisms == ("SCRAM-SHA-256",)  # no TLS, so no -PLUS
        scram = ScramSha256Client(b"not the password", request.mechanisms)
        client.send(fe.SASLInitialResponse(scram.mechanism, scram.client_first()).encode())
        server_first = client.receive()
        assert isinstance(server_first, be.AuthenticationSASLContinue)
        client.send(fe.SASLResponse(scram.client_final(server_first.data)).encode())
        error = client.receive()
        assert isinstance(error, be.ErrorResponse)
        assert (error.severity, error.sqlstate) == ("FATAL", "28P01")
    finally:
        client.sock.close()


def test_saslprep_agrees_with_the_server(postgres_server: PostgresServer) -> None:
    # The server SASLpreps the password when it stores the verifier; if our preparation
    # differed (soft hyphen removed, NBSP to space, NFKC), the login would fail.
    role = f"pgwire_saslprep_{secrets.token_hex(4)}"
    password = "p\u00e4ss\u00adw\u00f6rd\u00a0\u2168"
    with postgres_server.connect() as admin:
        admin.execute(
            sql.SQL("create role {} login password {}").format(
                sql.Identifier(role), sql.Literal(password)
            )
        )
    try:
        client = WireClient(postgres_server)
        try:
            client.login(role, password, postgres_server.dbname)
        finally:
            client.close()
    finally:
        with postgres_server.connect() as admin:
            admin.execute(sql.SQL("drop role {}").format(sql.Identifier(role)))
