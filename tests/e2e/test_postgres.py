"""Native PostgreSQL clients through the gateway's public endpoint to a real server.

One gateway, one agent and one PostgreSQL cluster serve the module; the connection's role
(`app_rw`, scram-sha-256) and its password are known only to the gateway (sealed) and the
agent. Clients log in as the Wardgate admin with the admin token as their password.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import signal
import socket
import sqlite3
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import psycopg
import pytest
from psycopg import sql

from gateway.crypto import SecretBox
from shared.pgwire.backend import decode_backend
from shared.pgwire.framing import MessageReader
from shared.pgwire.frontend import password_message
from shared.pgwire.startup import encode_ssl_request, encode_startup
from tests.fixtures.postgres import PostgresServer, StoppableServer
from tests.fixtures.wardgate import ADMIN_TOKEN, WARDGATE, GatewayProc, Proc, Wardgate, wait_for

pytestmark = pytest.mark.e2e

APP_PASSWORD = "app-secret-Zq9"


@dataclass
class Stack:
    wg: Wardgate
    gw: GatewayProc
    agent: Proc
    pg: PostgresServer

    def conninfo(self, dbname: str = "pg-main", **extra: str) -> str:
        params = {
            "host": "127.0.0.1",
            "port": str(self.gw.public_port),
            "dbname": dbname,
            "user": "admin",
            "password": ADMIN_TOKEN,
            "sslmode": "verify-full",
            "sslrootcert": str(self.gw.ca_path),
        }
        params.update(extra)
        return " ".join(f"{k}={v}" for k, v in params.items())

    def psql(
        self,
        *args: str,
        dbname: str = "pg-main",
        check: bool = True,
        timeout: float = 120,
        **extra: str,
    ) -> subprocess.CompletedProcess[str]:
        out = subprocess.run(
            ["psql", self.conninfo(dbname, **extra), "-X", "-v", "ON_ERROR_STOP=1", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check:
            assert out.returncode == 0, out.stderr
        return out

    def statements(self, text: str = "") -> list[str]:
        """Recorded statement texts containing `text` (the log holds pgbench's too)."""
        with self.gw.api() as api:
            events = api.get("/v1/audit", params={"kind": "pg.statement", "text": text})
        return [e["data"]["text"] for e in events.json()]

    def session_of(self, text: str) -> str:
        """The id of the session that ran the statement containing `text`."""
        with self.gw.api() as api:
            events = api.get("/v1/audit", params={"kind": "pg.statement", "text": text})
        ids: set[str] = {e["session"] for e in events.json()}
        assert len(ids) == 1, ids
        return ids.pop()

    def ended(self, session_id: str) -> dict[str, Any]:
        """The session's record, once its end is recorded."""

        def record() -> dict[str, Any] | None:
            with self.gw.api() as api:
                found: dict[str, Any] = api.get(f"/v1/sessions/{session_id}").json()
            return found if found["ended_at"] else None

        ended: dict[str, Any] = wait_for(record, f"the end of session {session_id}")
        return ended

    def close_event(self, session_id: str) -> dict[str, Any]:
        return next(e for e in self.gw.audit("session.close") if e["session"] == session_id)


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, postgres_server: PostgresServer
) -> Iterator[Stack]:
    with postgres_server.connect() as admin:
        admin.execute(sql.SQL("drop database if exists app"))
        admin.execute(sql.SQL("drop role if exists app_rw"))
        admin.execute(
            sql.SQL("create role app_rw login password {}").format(sql.Literal(APP_PASSWORD))
        )
        admin.execute(sql.SQL("create database app owner app_rw"))
    wg = Wardgate(tmp_path_factory.mktemp("pgstack"))
    try:
        gw = wg.gateway(secret_key=SecretBox.generate_key())
        agent = wg.agent(gw, gw.create_agent("default"), wait="default")
        gw.create_connection(
            name="pg-main",
            type="postgres",
            host="127.0.0.1",
            port=postgres_server.port,
            database="app",
            username="app_rw",
            password=APP_PASSWORD,
        )
        yield Stack(wg, gw, agent, postgres_server)
    finally:
        wg.close()


# ---- clients ---------------------------------------------------------------------------


def test_psql_runs_as_the_injected_role_and_every_statement_is_recorded(stack: Stack) -> None:
    out = stack.psql("-Atc", "select current_user, current_database()")
    assert out.stdout.strip() == "app_rw|app"
    # One Query message, two statements: two events.
    stack.psql("-Atc", "select 'multi-a'; select 'multi-b'")
    assert stack.statements("multi-") == ["select 'multi-a'", "select 'multi-b'"]
    assert "select current_user, current_database()" in stack.statements("current_database")
    assert APP_PASSWORD not in stack.gw.log(tail=100_000)


def test_psql_script_with_several_statements_and_copy_both_ways(
    stack: Stack, tmp_path: Path
) -> None:
    script = tmp_path / "script.sql"
    script.write_text(
        "create table if not exists items (id int primary key, name text);\n"
        "truncate items;\n"
        "insert into items values (1, 'one'), (2, 'two');\n"
        "select count(*) from items; select 1 / 1;\n"
    )
    out = stack.psql("-qAt", "-f", str(script))
    assert out.stdout.split() == ["2", "1"]
    csv_in = tmp_path / "in.csv"
    csv_in.write_text("3,three\n4,four\n")
    stack.psql("-c", f"\\copy items from '{csv_in}' with (format csv)")
    csv_out = tmp_path / "out.csv"
    stack.psql("-c", f"\\copy (select * from items order by id) to '{csv_out}' with (format csv)")
    assert csv_out.read_text().splitlines() == ["1,one", "2,two", "3,three", "4,four"]
    recorded = [t.upper() for t in stack.statements("items")]
    assert "INSERT INTO ITEMS VALUES (1, 'ONE'), (2, 'TWO');" in recorded
    assert any("FROM STDIN" in t for t in recorded)
    assert any("TO STDOUT" in t for t in recorded)


def test_wardgate_psql_and_creds(stack: Stack, tmp_path: Path) -> None:
    env = stack.gw.client_env()
    env["WARDGATE_CONFIG_DIR"] = str(tmp_path / "cfg")
    run = subprocess.run(
        [*WARDGATE, "psql", "pg-main", "-Atc", "select 40 + 2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "42"
    creds = subprocess.run(
        [*WARDGATE, "creds", "pg-main"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert creds.returncode == 0, creds.stderr
    with psycopg.connect(creds.stdout.strip()) as conn:
        assert conn.execute("select 7").fetchone() == (7,)
    pgpass = tmp_path / "pgpass"
    env["PGPASSFILE"] = str(pgpass)
    written = subprocess.run(
        [*WARDGATE, "creds", "pg-main", "--pgpass"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "password" not in written.stdout
    assert pgpass.stat().st_mode & 0o777 == 0o600
    with psycopg.connect(written.stdout.strip(), passfile=str(pgpass)) as conn:
        assert conn.execute("select 8").fetchone() == (8,)


def test_psycopg_text_binary_pipeline_cursors_and_copy(stack: Stack) -> None:
    with psycopg.connect(stack.conninfo()) as conn:
        conn.execute("create table if not exists t (id int, payload bytea, note text)")
        conn.execute("truncate t")
        with conn.cursor() as cur:
            cur.execute("insert into t values (%s, %s, %s)", (1, b"\x00\x01binary", "text"))
            cur.execute("select id, payload, note from t where id = %s", (1,), binary=True)
            assert cur.fetchone() == (1, b"\x00\x01binary", "text")
            cur.execute("select note from t where id = %s", (1,))
            assert cur.fetchone() == ("text",)
        with conn.pipeline():
            cursors = [conn.execute("select %s::int * 2", (i,)) for i in range(20)]
        assert [c.fetchone() for c in cursors] == [(i * 2,) for i in range(20)]
        with conn.cursor(name="server_side") as cur:
            cur.itersize = 100
            cur.execute("select g from generate_series(1, 1000) g")
            assert sum(row[0] for row in cur) == 500500
        with conn.cursor() as cur:
            with cur.copy("copy t (id, note) from stdin") as copy:
                for i in range(2, 102):
                    copy.write_row((i, f"row {i}"))
            with cur.copy("copy (select count(*) from t) to stdout") as copy:
                assert [bytes(b) for b in copy] == [b"101\n"]
        conn.commit()
    assert "select $1::int * 2" in stack.statements("::int * 2")
    assert "select g from generate_series(1, 1000) g" in "".join(stack.statements("series"))


def test_pgbench_initialises_and_runs_select_only_with_eight_clients(stack: Stack) -> None:
    env = dict(
        os.environ,
        PGPASSWORD=ADMIN_TOKEN,
        PGSSLMODE="verify-full",
        PGSSLROOTCERT=str(stack.gw.ca_path),
    )
    base = ["pgbench", "-h", "127.0.0.1", "-p", str(stack.gw.public_port), "-U", "admin"]
    init = subprocess.run(
        [*base, "-i", "-s", "1", "pg-main"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert init.returncode == 0, init.stderr
    run = subprocess.run(
        [*base, "-S", "-c", "8", "-j", "2", "-T", "10", "pg-main"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert "number of failed transactions: 0" in run.stdout
    processed = next(line for line in run.stdout.splitlines() if "transactions actually" in line)
    assert int(processed.split(":")[1].split("/")[0]) > 0
    print("\n" + run.stdout)


def test_cancel_stops_a_running_query_and_the_session_goes_on(stack: Stack) -> None:
    with psycopg.connect(stack.conninfo(), autocommit=True) as conn:
        raised = stack.pg.interrupt(conn, "select pg_sleep(60)", conn.cancel_safe)
        assert isinstance(raised, psycopg.errors.QueryCanceled), raised
        assert conn.execute("select 'still here'").fetchone() == ("still here",)
    assert stack.gw.audit("pg.cancel"), "the cancel was not audited"


def test_legacy_plaintext_cancel_is_routed_too(stack: Stack) -> None:
    with psycopg.connect(stack.conninfo(), autocommit=True) as conn:
        # PQcancel: a plaintext CancelRequest
        raised = stack.pg.interrupt(conn, "select pg_sleep(60)", conn.cancel)
        assert isinstance(raised, psycopg.errors.QueryCanceled), raised


def _rss(pid: int) -> int:
    return int(psutil.Process(pid).memory_info().rss)


@pytest.mark.slow
def test_gigabyte_result_streams_with_bounded_gateway_and_agent_memory(stack: Stack) -> None:
    watched = {"gateway": stack.gw.pid, "agent": stack.agent.pid}
    baseline = {k: _rss(p) for k, p in watched.items()}
    peak = dict(baseline)
    total = 0
    rows = 0
    with (
        psycopg.connect(stack.conninfo()) as conn,
        conn.cursor().copy(
            "copy (select repeat('x', 1000) from generate_series(1, 1050000)) to stdout"
        ) as copy,
    ):
        for block in copy:
            total += len(block)
            rows += 1
            if rows % 2000 == 0:
                for k, p in watched.items():
                    peak[k] = max(peak[k], _rss(p))
    assert total >= 1_050_000 * 1001
    growth = {k: (peak[k] - baseline[k]) >> 20 for k in watched}
    print(f"\n1 GB COPY result: {total >> 20} MiB, RSS growth MiB {growth}")
    for name, mib in growth.items():
        assert mib < 100, f"{name} RSS grew {mib} MiB while streaming {total >> 20} MiB"


# ---- errors in the client's own protocol ----------------------------------------------


def _sqlstate(stack: Stack, **kw: str) -> tuple[str | None, str]:
    dbname = kw.pop("dbname", "pg-main")
    try:
        with psycopg.connect(stack.conninfo(dbname, **kw), connect_timeout=30):
            pass
    except psycopg.OperationalError as exc:
        return (exc.sqlstate, str(exc))
    return (None, "")


def test_unknown_connection_bad_password_and_plaintext_are_refused(stack: Stack) -> None:
    state, text = _sqlstate(stack, dbname="nope")
    assert "3D000" in (state or "") or "does not exist" in text, text
    state, text = _sqlstate(stack, password="wgt_wrong")
    assert "password authentication failed" in text
    state, text = _sqlstate(stack, sslmode="disable")
    assert "requires TLS" in text


def test_unreachable_target_and_refused_credential_name_the_connection(stack: Stack) -> None:
    stack.gw.create_connection(
        name="pg-down",
        type="postgres",
        host="127.0.0.1",
        port=1,
        database="app",
        username="app_rw",
        password="x-irrelevant",
    )
    _, text = _sqlstate(stack, dbname="pg-down")
    assert "pg-down" in text and "cannot reach" in text
    stack.gw.create_connection(
        name="pg-badpw",
        type="postgres",
        host="127.0.0.1",
        port=stack.pg.port,
        database="app",
        username="app_rw",
        password="wrong-password-123",
    )
    _, text = _sqlstate(stack, dbname="pg-badpw")
    assert "pg-badpw" in text and "28P01" in text
    assert "wrong-password-123" not in text
    assert "wrong-password-123" not in stack.gw.log(tail=100_000)


def test_no_agent_for_the_pool_is_named(stack: Stack) -> None:
    stack.gw.create_connection(
        name="pg-elsewhere",
        type="postgres",
        agent="dc9",
        host="127.0.0.1",
        port=stack.pg.port,
        database="app",
        username="app_rw",
        password="x-irrelevant",
    )
    _, text = _sqlstate(stack, dbname="pg-elsewhere")
    assert "dc9" in text


def test_garbage_after_login_gets_a_protocol_violation_and_others_go_on(stack: Stack) -> None:
    ctx = ssl.create_default_context(cafile=str(stack.gw.ca_path))
    with socket.create_connection(("127.0.0.1", stack.gw.public_port), timeout=30) as raw:
        raw.sendall(encode_ssl_request())
        assert raw.recv(1) == b"S"
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.sendall(encode_startup({"user": "admin", "database": "pg-main"}))
            frames = MessageReader()

            def until(kind: bytes) -> list[object]:
                seen: list[object] = []
                while True:
                    while (m := frames.next_message()) is None:
                        data = tls.recv(65536)
                        assert data, f"closed before {kind!r}: {seen}"
                        frames.feed(data)
                    seen.append(decode_backend(m))
                    if m.type == kind:
                        return seen

            until(b"R")  # AuthenticationCleartextPassword
            tls.sendall(password_message(ADMIN_TOKEN.encode()))
            until(b"Z")
            tls.sendall(b"Q\xff\xff\xff\xffgarbage")
            error = until(b"E")[-1]
            assert getattr(error, "sqlstate", None) == "08P01"
    with psycopg.connect(stack.conninfo()) as conn:
        assert conn.execute("select 1").fetchone() == (1,)


# ---- audit -----------------------------------------------------------------------------


def test_sessions_show_lists_statements_and_tampering_is_detected(stack: Stack) -> None:
    with psycopg.connect(stack.conninfo(application_name="audit-probe")) as conn:
        conn.execute("select 'needle-7731'")
    listed = stack.wg.cli(stack.gw, "sessions", "list", "--text", "needle-7731", "--json")
    assert listed.returncode == 0, listed.stderr
    sessions = json.loads(listed.stdout)
    assert len(sessions) == 1
    shown = stack.wg.cli(stack.gw, "sessions", "show", sessions[0]["id"])
    assert "select 'needle-7731'" in shown.stdout and "SELECT 1" in shown.stdout
    assert stack.wg.cli(stack.gw, "audit", "verify").returncode == 0

    db = stack.gw.data_dir / "wardgate.db"
    with sqlite3.connect(db) as raw:
        seq = raw.execute(
            "select seq from audit_events where kind = 'pg.statement' and data like '%needle-7731%'"
        ).fetchone()[0]
        raw.execute(
            "update audit_events set data = replace(data, 'needle-7731', 'innocent') where seq = ?",
            (seq,),
        )
    offline = subprocess.run(
        [*WARDGATE, "audit", "verify", "--store", f"sqlite:///{db}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert offline.returncode == 1
    assert f"event {seq} was edited" in offline.stderr  # edited, not missing
    online = stack.wg.cli(stack.gw, "audit", "verify")
    assert online.returncode == 1 and f"event {seq} was edited" in online.stderr


def test_agent_killed_mid_query_gives_a_clear_error(stack: Stack) -> None:
    conn = psycopg.connect(stack.conninfo(), autocommit=True)
    try:
        assert conn.execute("select 1").fetchone() == (1,)
        raised = stack.pg.interrupt(conn, "select pg_sleep(30)", stack.agent.kill)
        assert isinstance(raised, psycopg.OperationalError), raised
        assert "pg-main" in str(raised) or "agent" in str(raised)
    finally:
        conn.close()
    assert stack.gw.healthy()
    # Put the module's agent back for whatever runs after this test.
    key = stack.gw.create_agent("default-2", pool="default")
    stack.agent = stack.wg.agent(stack.gw, key, wait="default-2")

    def reconnects() -> bool:
        with psycopg.connect(stack.conninfo()) as again:
            return again.execute("select 1").fetchone() == (1,)

    wait_for(reconnects, "a new session through the new agent")


def test_direct_tls_listen_notify_notices_and_parameter_status(stack: Stack) -> None:
    # PostgreSQL 17+ direct TLS: no SSLRequest, ALPN "postgresql" on the public port.
    with psycopg.connect(stack.conninfo(sslnegotiation="direct"), autocommit=True) as conn:
        assert conn.execute("select 'direct'").fetchone() == ("direct",)
        notices: list[str] = []
        conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
        conn.execute("do $$ begin raise notice 'hello from plpgsql'; end $$")
        assert notices == ["hello from plpgsql"]
        conn.execute("set application_name = 'renamed-by-set'")
        assert conn.info.parameter_status("application_name") == "renamed-by-set"
        conn.execute("listen wardgate_channel")
        with psycopg.connect(stack.conninfo(), autocommit=True) as other:
            other.execute("notify wardgate_channel, 'payload-1'")
        note = next(conn.notifies(timeout=30, stop_after=1))
        assert (note.channel, note.payload) == ("wardgate_channel", "payload-1")


def test_parameter_values_are_recorded_only_when_the_connection_says_so(stack: Stack) -> None:
    stack.gw.create_connection(
        name="pg-params",
        type="postgres",
        host="127.0.0.1",
        port=stack.pg.port,
        database="app",
        username="app_rw",
        password=APP_PASSWORD,
        options={"record_params": "true"},
    )
    with psycopg.connect(stack.conninfo("pg-params")) as conn:
        conn.execute("select %s::text as marker_with_params", ("visible-value",))
    with psycopg.connect(stack.conninfo()) as conn:
        conn.execute("select %s::text as marker_without_params", ("hidden-value",))
    with stack.gw.api() as api:
        events = api.get("/v1/audit", params={"kind": "pg.statement", "text": "marker_"}).json()
    by_text = {e["data"]["text"]: e["data"] for e in events}
    assert by_text["select $1::text as marker_with_params"]["values"] == ["visible-value"]
    hidden = by_text["select $1::text as marker_without_params"]
    assert "values" not in hidden and hidden["params"] == 1
    assert "hidden-value" not in json.dumps(events)


def test_malformed_startup_packet_gets_a_protocol_violation(stack: Stack) -> None:
    # A v3 startup packet whose parameters are not NUL-terminated pairs.
    body = (196608).to_bytes(4, "big") + b"user\x00admin"  # missing terminators
    packet = (len(body) + 4).to_bytes(4, "big") + body
    with socket.create_connection(("127.0.0.1", stack.gw.public_port), timeout=30) as raw:
        raw.sendall(packet)
        frames = MessageReader()
        while (m := frames.next_message()) is None:
            data = raw.recv(65536)
            assert data, "closed without an ErrorResponse"
            frames.feed(data)
        error = decode_backend(m)
        assert getattr(error, "sqlstate", None) == "08P01"
    assert stack.gw.healthy()


# ---- the server ends the session -------------------------------------------------------

# Seconds within which a client whose session the server ended has the error and end-of-file.
# A direct connection has both at once; before this bound existed, the client waited forever.
SERVER_END = 10.0
TERMINATED = "terminating connection due to administrator command"


def closed_by_server(conn: psycopg.Connection[Any]) -> bool:
    """Read what the server sent the idle connection and tell whether it has reached
    end-of-file; as on a direct connection, libpq gives an error that nobody asked for to
    the notice handlers."""
    with contextlib.suppress(psycopg.OperationalError):
        conn.pgconn.consume_input()
    conn.pgconn.is_busy()  # parses what was read
    return conn.closed


def notices_of(conn: psycopg.Connection[Any]) -> list[tuple[str | None, str | None]]:
    notices: list[tuple[str | None, str | None]] = []
    conn.add_notice_handler(lambda d: notices.append((d.sqlstate, d.message_primary)))
    return notices


async def test_pg_terminate_backend_reaches_the_client_and_ends_its_connection(
    stack: Stack,
) -> None:
    conn = await psycopg.AsyncConnection.connect(stack.conninfo(), autocommit=True)
    async with conn:
        await conn.execute("select 'terminate-probe'")
        with pytest.raises(psycopg.errors.AdminShutdown) as info:
            async with asyncio.timeout(SERVER_END):
                await conn.execute("select pg_terminate_backend(pg_backend_pid())")
        assert info.value.sqlstate == "57P01"
        assert TERMINATED in str(info.value)
        told = dt.datetime.now(dt.UTC)
        assert conn.closed
        with pytest.raises(psycopg.OperationalError):
            await conn.execute("select 1")
    session_id = stack.session_of("terminate-probe")
    record = stack.ended(session_id)
    assert record["status"] == "failed"
    assert record["error"] == f"the server ended the session: 57P01 {TERMINATED}"
    assert stack.close_event(session_id)["data"]["error"] == record["error"]
    # Ended when the server ended it, not whenever the client gave up.
    assert dt.datetime.fromisoformat(record["ended_at"]) <= told + dt.timedelta(seconds=1)


def test_idle_in_transaction_timeout_ends_the_session_without_the_client(stack: Stack) -> None:
    with psycopg.connect(stack.conninfo(), autocommit=True) as conn:
        notices = notices_of(conn)
        conn.execute("set idle_in_transaction_session_timeout = '200ms'")
        conn.execute("begin")
        conn.execute("select 'idle-probe'")
        session_id = stack.session_of("idle-probe")
        # The client does nothing meanwhile: the session ends because the server ended it.
        record = stack.ended(session_id)
        assert record["error"].startswith("the server ended the session: 25P03 ")
        assert "idle-in-transaction timeout" in record["error"]
        wait_for(lambda: closed_by_server(conn), "the client to read the error and end-of-file")
        assert [code for code, _ in notices] == ["25P03"]
        with pytest.raises(psycopg.OperationalError):
            conn.execute("select 1")


def test_psql_exits_by_itself_with_the_servers_message_when_terminated(stack: Stack) -> None:
    out = stack.psql(
        "-c", "select pg_terminate_backend(pg_backend_pid())", check=False, timeout=SERVER_END
    )
    assert out.returncode == 2, out.stderr
    assert f"FATAL:  {TERMINATED}" in out.stderr
    assert "Traceback" not in out.stderr


def test_a_server_restart_under_an_open_session_ends_it_at_once(
    stack: Stack, stoppable_postgres: StoppableServer
) -> None:
    target = stoppable_postgres.server
    stack.gw.create_connection(**target.connection_spec("pg-restart"))
    with psycopg.connect(stack.conninfo("pg-restart"), autocommit=True) as conn:
        notices = notices_of(conn)
        conn.execute("select 'restart-probe'")
        stoppable_postgres.stop()  # fast: every backend sends FATAL 57P01, then exits
        # Without the client doing anything (before the fix it waited forever). The deadline
        # is generous for a loaded machine; on an idle one it takes milliseconds.
        wait_for(
            lambda: closed_by_server(conn),
            "the client to read the error and end-of-file",
            timeout=SERVER_END,
        )
        assert notices == [("57P01", TERMINATED)]
    record = stack.ended(stack.session_of("restart-probe"))
    assert record["error"] == f"the server ended the session: 57P01 {TERMINATED}"
    stoppable_postgres.start()
    with psycopg.connect(stack.conninfo("pg-restart")) as again:
        assert again.execute("select 'after the restart'").fetchone() == ("after the restart",)


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def test_a_backend_gone_without_a_word_ends_the_session_as_closed_by_the_server(
    stack: Stack, stoppable_postgres: StoppableServer
) -> None:
    target = stoppable_postgres.server
    stack.gw.create_connection(**target.connection_spec("pg-killed"))
    conn = await psycopg.AsyncConnection.connect(stack.conninfo("pg-killed"), autocommit=True)
    async with conn:
        cur = await conn.execute("select pg_backend_pid(), 'killed-probe'")
        row = await cur.fetchone()
        assert row is not None
        # A backend killed outright says nothing: its socket just closes, and libpq reports
        # the end-of-file (over TLS, one without close_notify), as it does directly.
        os.kill(row[0], signal.SIGKILL)
        # Until the process is gone, a statement sent now would reach its socket unread, and
        # the kernel would answer the close with a reset instead of end-of-file.
        await asyncio.to_thread(wait_for, lambda: _gone(row[0]), "the killed backend to exit")
        with pytest.raises(psycopg.OperationalError, match=r"server closed|unexpected eof"):
            async with asyncio.timeout(SERVER_END):
                await conn.execute("select 1")
        assert conn.closed
    record = stack.ended(stack.session_of("killed-probe"))
    assert record["error"] == "the server closed the connection"


def test_a_client_that_leaves_first_is_recorded_closed_without_an_error(stack: Stack) -> None:
    # The server closes right after the client's Terminate: that close answers the client,
    # and is not the server ending the session. Many times, since the two race.
    probes = [f"goodbye-probe-{i:02d}" for i in range(12)]
    for probe in probes[:6]:
        with psycopg.connect(stack.conninfo()) as conn:
            conn.execute(f"select '{probe}'")
    for probe in probes[6:]:
        stack.psql("-c", f"select '{probe}'")
    for probe in probes:
        record = stack.ended(stack.session_of(probe))
        assert (record["status"], record["error"]) == ("closed", None), probe
