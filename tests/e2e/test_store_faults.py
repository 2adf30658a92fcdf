"""The store failing under a running gateway, end to end: a full disk, a lost database.

The gateway's SQLite store lives on a small tmpfs that the test fills with a ballast file:
the real ENOSPC, met by SQLite's own write path. What must hold while the disk is full and
after space comes back:
- a statement whose audit event cannot be written is not run (the server never sees it) and
  its client gets a PostgreSQL error naming the cause; a client that connects meanwhile is
  refused in its own protocol, not left hanging;
- every statement that did run is in the log, and nothing that did not run is; the hash
  chain of what was written verifies;
- the gateway keeps running: a session that was open and idle through it carries on, and new
  sessions work once space is freed, without a restart.
The same for SSH: a command is not run, and a terminal whose recording (on its own small
disk) cannot be written stops, having shown the client nothing that is not in the file.
And for a PostgreSQL store that goes away and comes back on the same address, as a
failover looks to its clients.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import hashlib
import os
import re
import socket
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from gateway.crypto import SecretBox
from tests.e2e.test_kubernetes import KUBE_POLICY, KUBECTL
from tests.e2e.test_ssh import Route, ssh_connection
from tests.fixtures.kube_apiserver import KubeApiServerDouble, connect_and_log_in
from tests.fixtures.postgres import PostgresServer, StoppableServer
from tests.fixtures.sshd import Sshd
from tests.fixtures.wardgate import ADMIN_TOKEN, WARDGATE, GatewayProc, Wardgate, wait_for

pytestmark = pytest.mark.e2e

MAX_STATEMENTS = 20_000  # the write-ahead log outgrows a full disk long before this
# The session row and its audit event are written at once: either write may be the one refused.
NOT_OPENED = "session not opened: (store|audit log) unavailable: database or disk is full"


@contextlib.contextmanager
def small_disk(path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs mounted at `path`: a disk that can really fill up."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (CI runs as root)")
    path.mkdir(exist_ok=True)
    mount = ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(path)]
    mounted = subprocess.run(mount, capture_output=True, text=True, check=False)
    if mounted.returncode != 0:  # root without CAP_SYS_ADMIN (some containers)
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    """A small disk for the store. Requested before `wardgate`, so that the gateway stops
    before the disk goes."""
    with small_disk(tmp_path / "disk") as path:
        yield path


def gateway_on(wardgate: Wardgate, disk: Path) -> GatewayProc:
    """A gateway whose store is on `disk`, with an agent."""
    gw = wardgate.gateway(
        store=f"sqlite:///{disk / 'wardgate.db'}", secret_key=SecretBox.generate_key()
    )
    wardgate.agent(gw, gw.create_agent("default"), wait="default")
    return gw


def assert_not_crashed(gw: GatewayProc) -> None:
    """No exception went through Wardgate's own code unhandled (a library may still log
    one it handled, e.g. SQLAlchemy's pool failing to reset a connection that died)."""
    frames = re.findall(r'File ".*/(?:gateway|agent|shared|cli)/[^"]*"', gw.log(tail=100_000))
    assert not frames, frames


def verify_chain(store_url: str) -> None:
    verify = subprocess.run(
        [*WARDGATE, "audit", "verify", "--store", store_url],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert verify.returncode == 0, verify.stderr
    assert "audit log intact" in verify.stdout


def fill(disk: Path, leave: int) -> Path:
    """Write a ballast file until the disk refuses another byte, then give `leave` back."""
    ballast = disk / "ballast"
    with ballast.open("wb", buffering=0) as f:
        for size in (1 << 20, 1 << 12, 1):
            try:
                while True:
                    f.write(b"\0" * size)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
        f.truncate(f.tell() - leave)
    return ballast


def target_database(postgres_server: PostgresServer, name: str, gw: GatewayProc) -> PostgresServer:
    """A fresh database `name` with an empty table t, reached through `gw` as pg-disk."""
    postgres_server.drop_database(name)
    server = postgres_server.create_database(name)
    with server.connect() as direct:
        direct.execute("create table t (n int primary key)")
    gw.create_connection(**server.connection_spec("pg-disk"))
    return server


def two_sessions(
    stack: contextlib.ExitStack, gw: GatewayProc
) -> tuple[psycopg.Connection[Any], psycopg.Connection[Any]]:
    """A writer that has inserted 0 into t, and a bystander past its first statement."""
    writer = stack.enter_context(psycopg.connect(conninfo(gw), autocommit=True))
    bystander = stack.enter_context(psycopg.connect(conninfo(gw), autocommit=True))
    writer.execute("insert into t values (0)")
    bystander.execute("select 1")
    return writer, bystander


def conninfo(gw: GatewayProc) -> str:
    return (
        f"host=127.0.0.1 port={gw.public_port} dbname=pg-disk user=admin "
        f"password={ADMIN_TOKEN} sslmode=verify-full sslrootcert={gw.ca_path}"
    )


def test_a_full_audit_disk_stops_statements_and_loses_no_record(
    disk: Path, wardgate: Wardgate, postgres_server: PostgresServer
) -> None:
    gw = gateway_on(wardgate, disk)
    server = target_database(postgres_server, "diskfull", gw)
    with contextlib.ExitStack() as stack:
        writer, bystander = two_sessions(stack, gw)

        # Room for a few statements: the one that finds the disk full shares its commit
        # with the result of the one before, which ran.
        ballast = fill(disk, leave=64 << 10)
        ran = 1
        with pytest.raises(psycopg.Error) as refused:
            while ran < MAX_STATEMENTS:
                writer.execute(f"insert into t values ({ran})")
                ran += 1
        assert ran > 2, "the disk was full before any statement ran"
        assert refused.value.sqlstate == "58030", refused.value
        assert "statement not run" in str(refused.value)
        assert "disk is full" in str(refused.value)

        # Connecting while the disk is full: refused in PostgreSQL's protocol.
        with pytest.raises(psycopg.OperationalError) as late:
            psycopg.connect(conninfo(gw), connect_timeout=30)
        assert re.search(f"FATAL:  {NOT_OPENED}", str(late.value)), late.value

        # An administrator's change is not made either, and the API says why.
        with gw.api() as api:
            made = api.post("/v1/connections", json={"name": "later", "host": "h", "port": 1})
        assert made.status_code == 503, made.text
        assert made.json()["detail"].endswith("database or disk is full")

        freed_at = dt.datetime.now(dt.UTC)
        ballast.unlink()
        # The idle session carries on; new sessions work; no restart.
        assert bystander.execute("select 'still here'").fetchone() == ("still here",)
        with psycopg.connect(conninfo(gw), autocommit=True) as later:
            later.execute(f"insert into t values ({MAX_STATEMENTS})")
        assert gw.alive()
        with gw.api() as api:
            assert "later" not in {c["name"] for c in api.get("/v1/connections").json()}

        # What ran is recorded, results and the session's end included; what was refused
        # neither ran nor is recorded.
        with server.connect() as direct:
            stored = {n for (n,) in direct.execute("select n from t")}
        assert stored == set(range(ran)) | {MAX_STATEMENTS}
        first = gw.audit("pg.statement")
        writer_id = next(
            e["session"] for e in first if e["data"]["text"] == "insert into t values (0)"
        )

        def writer_session() -> dict[str, Any] | None:
            with gw.api() as api:
                record: dict[str, Any] = api.get(f"/v1/sessions/{writer_id}").json()
            done = record["ended_at"] and all(
                st["tags"] == ["INSERT 0 1"] for st in record["statements"]
            )
            return record if done else None

        record = wait_for(writer_session, "the writer's results and end in the store", 60)
        assert record["status"] == "failed"
        assert "statement not run" in record["error"]
        assert dt.datetime.fromisoformat(record["ended_at"]) < freed_at  # when it ended
        recorded = {int(st["text"].rsplit("(", 1)[1].rstrip(")")) for st in record["statements"]}
        assert recorded == set(range(ran))
        verify_chain(f"sqlite:///{disk / 'wardgate.db'}")
        assert_not_crashed(gw)


def test_an_ssh_command_is_not_run_while_the_audit_disk_is_full(
    disk: Path, wardgate: Wardgate, sshd: Sshd, tmp_path: Path
) -> None:
    gw = gateway_on(wardgate, disk)
    gw.create_connection(**ssh_connection(sshd))
    route = Route(gw, sshd, tmp_path)
    marker = tmp_path / "ran"
    assert route.ssh("true").returncode == 0
    ballast = fill(disk, leave=0)
    out = route.ssh(f"touch {marker}")
    assert out.returncode != 0
    assert b"disk is full" in out.stderr, out.stderr
    assert not marker.exists()
    ballast.unlink()
    out = route.ssh(f"touch {marker}")
    assert out.returncode == 0, out.stderr
    assert marker.exists()
    assert gw.alive()
    verify_chain(f"sqlite:///{disk / 'wardgate.db'}")
    assert_not_crashed(gw)


def test_a_terminal_that_cannot_be_recorded_stops(
    wardgate: Wardgate, sshd: Sshd, tmp_path: Path
) -> None:
    """Recordings on a full disk: the terminal stops with a message; what the client saw
    is in the recording, whose audited hash matches the file; space back, shells work."""
    import pexpect

    gw = wardgate.gateway()
    wardgate.agent(gw, gw.create_agent("default"), wait="default")
    gw.create_connection(**ssh_connection(sshd))
    route = Route(gw, sshd, tmp_path)
    args = ["-tt", "-p", str(gw.public_port), *route.options(), route.destination]
    with small_disk(gw.data_dir / "recordings") as recordings:
        ballast = fill(recordings, leave=0)
        child = pexpect.spawn("ssh", args, env=route.env(), timeout=30)
        child.expect("wardgate: the session recording failed: No space left on device")
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == 1

        ballast.unlink()
        ballast = fill(recordings, leave=64 << 10)  # room for a session's start, not more
        child = pexpect.spawn("ssh", args, env=route.env(), timeout=30)
        child.sendline("echo ready-$((2+3))")
        child.expect("ready-5")
        child.sendline("head -c 300000 /dev/zero | tr '\\0' x; echo")
        child.expect("the session recording failed: No space left on device; the channel")
        seen = child.before.count(b"x")
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == 1

        (failed,) = gw.audit("ssh.recording_failed")[-1:]
        assert "No space left on device" in failed["data"]["reason"]
        recording = wait_for(
            lambda: [e for e in gw.audit("ssh.recording") if e["data"].get("incomplete")],
            "the cut recording in the audit log",
        )[-1]["data"]
        cast = (recordings / recording["path"]).read_bytes()
        assert hashlib.sha256(cast).hexdigest() == recording["sha256"]
        assert len(cast) == recording["bytes"]
        assert 0 < seen <= cast.count(b"x")  # nothing reached the client unrecorded

        ballast.unlink()
        child = pexpect.spawn("ssh", args, env=route.env(), timeout=30)
        child.sendline("echo alive-$((2+3))")
        child.expect("alive-5")
        child.sendline("exit")
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == 0
    assert_not_crashed(gw)


def test_a_lost_store_database_stops_statements_until_it_is_back(
    stoppable_postgres: StoppableServer, wardgate: Wardgate, postgres_server: PostgresServer
) -> None:
    store = stoppable_postgres.server
    gw = wardgate.gateway(store=store.url(), secret_key=SecretBox.generate_key())
    wardgate.agent(gw, gw.create_agent("default"), wait="default")
    server = target_database(postgres_server, "storelost", gw)
    with contextlib.ExitStack() as stack:
        writer, bystander = two_sessions(stack, gw)

        stoppable_postgres.stop()
        with pytest.raises(psycopg.Error) as refused:
            writer.execute("insert into t values (1)")
        assert refused.value.sqlstate == "58030", refused.value
        assert "statement not run: audit log unavailable" in str(refused.value)
        with pytest.raises(psycopg.OperationalError) as late:
            psycopg.connect(conninfo(gw), connect_timeout=30)
        assert "FATAL:  connection not accepted: store unavailable" in str(late.value)
        with gw.api() as api:
            assert api.get("/v1/whoami").status_code == 503

        stoppable_postgres.start()
        assert bystander.execute("select 'still here'").fetchone() == ("still here",)
        with psycopg.connect(conninfo(gw), autocommit=True) as later:
            later.execute("insert into t values (2)")
        assert gw.alive()

        with server.connect() as direct:
            assert {n for (n,) in direct.execute("select n from t")} == {0, 2}
        texts = [e["data"]["text"] for e in gw.audit("pg.statement")]
        assert [t for t in texts if t.startswith("insert")] == [
            "insert into t values (0)",
            "insert into t values (2)",
        ]
        writer_id = next(
            e["session"] for e in gw.audit("pg.statement") if e["data"]["text"].endswith("(0)")
        )

        def writer_ended() -> dict[str, Any] | None:
            with gw.api() as api:
                record: dict[str, Any] = api.get(f"/v1/sessions/{writer_id}").json()
            return record if record["ended_at"] else None

        assert "statement not run" in wait_for(writer_ended, "the writer's end", 60)["error"]
        verify_chain(store.url())
        assert_not_crashed(gw)


def test_a_tcp_session_is_not_opened_while_the_audit_disk_is_full(
    disk: Path, wardgate: Wardgate
) -> None:
    gw = gateway_on(wardgate, disk)
    with socket.create_server(("127.0.0.1", 0)) as target:
        target.setblocking(False)
        gw.create_connection(name="raw", host="127.0.0.1", port=target.getsockname()[1])
        cli, port = wardgate.tcp(gw, "raw")
        ballast = fill(disk, leave=0)
        with socket.create_connection(("127.0.0.1", port), timeout=30) as client:
            client.sendall(b"anyone?")
            assert client.recv(100) == b""  # closed, with nothing relayed
        printed = wait_for(
            lambda: [
                line for line in cli.log().splitlines() if line.startswith("wardgate tcp: raw: ")
            ],
            "wardgate tcp to print why",
        )
        assert len(printed) == 1
        assert re.fullmatch(f"wardgate tcp: raw: {NOT_OPENED}", printed[0]), printed
        with pytest.raises(BlockingIOError):
            target.accept()  # nobody dialled the target
        ballast.unlink()
    assert_not_crashed(gw)


def test_a_kubernetes_request_is_not_forwarded_while_the_audit_disk_is_full(
    kube_apiserver: KubeApiServerDouble, disk: Path, wardgate: Wardgate, tmp_path: Path
) -> None:
    gw = wardgate.gateway(store=f"sqlite:///{disk / 'wardgate.db'}", kubernetes=KUBE_POLICY)
    wardgate.agent(gw, gw.create_agent("default"), wait="default")
    kubeconfig = connect_and_log_in(wardgate, gw, kube_apiserver, tmp_path)
    env = {**gw.client_env(), "KUBECONFIG": str(kubeconfig), "HOME": str(tmp_path)}

    def kubectl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [KUBECTL, *args], env=env, capture_output=True, text=True, timeout=60, check=False
        )

    ballast = fill(disk, leave=0)
    # kubectl's credential plugin mints a credential per run: refused first, with the reason.
    out = kubectl("delete", "pod", "web-2")
    assert out.returncode != 0
    assert re.search(
        "gateway answered 503: (store|audit log) unavailable: database or disk is full", out.stderr
    ), out.stderr
    # A client holding a credential already reaches the Kubernetes door, which refuses too.
    with gw.api() as api:
        answer = api.delete("/k8s/k8s/api/v1/namespaces/default/pods/web-2")
    assert answer.status_code == 503, answer.text
    assert answer.json()["kind"] == "Status"
    assert "disk is full" in answer.json()["message"]
    assert not [r for r in kube_apiserver.requests if r["method"] == "DELETE"]
    ballast.unlink()
    out = kubectl("delete", "pod", "web-2")
    assert out.returncode == 0, out.stderr
    assert ("default", "web-2") not in kube_apiserver.pods
    assert_not_crashed(gw)


def rename_table(db: Path, old: str, new: str) -> None:
    """Rename a table of a running gateway's SQLite store: with audit_events away, every
    audit append fails in the database while the rest of the store takes writes."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.execute(f"ALTER TABLE {old} RENAME TO {new}")


def test_admin_changes_whose_audit_event_cannot_be_written_are_not_made(
    wardgate: Wardgate,
) -> None:
    """Each administrator's change and its audit event are one store transaction: when the
    event cannot be written, the API answers 503 and nothing changed."""
    gw = wardgate.gateway(secret_key=SecretBox.generate_key(), identity={"local_users": True})
    deny = {"rules": [{"name": "no-writes", "effect": "deny", "match": {"kinds": ["write"]}}]}
    budget = {"budgets": [{"name": "daily", "rows_per_day": 5}]}
    with gw.api() as api:
        assert api.post("/v1/connections", json={"name": "kept", "host": "h", "port": 1}).is_success
        made = api.post("/v1/agents", json={"name": "ag"})
        assert made.is_success
        agent_key = made.json()["key"]
        assert api.put("/v1/policy", json={"policy": deny}).is_success  # version 1
        assert api.put("/v1/policy", json={"policy": budget}).is_success  # version 2
        assert api.post("/v1/service-accounts", json={"name": "bot"}).is_success
    before = gw.audit()
    db = gw.data_dir / "wardgate.db"
    rename_table(db, "audit_events", "audit_events_away")
    changes: list[tuple[str, str, dict[str, Any] | None]] = [
        ("post", "/v1/connections", {"name": "new", "host": "h", "port": 1}),
        ("delete", "/v1/connections/kept", None),
        ("post", "/v1/apply", {"connections": [{"name": "applied", "host": "h", "port": 2}]}),
        ("post", "/v1/apply", {"policy": {}}),
        ("put", "/v1/policy", {"policy": {}}),
        ("post", "/v1/policy/versions/1/rollback", None),
        ("post", "/v1/agents", {"name": "ag2"}),
        ("post", "/v1/agents/ag/rotate", None),
        ("post", "/v1/service-accounts", {"name": "bot2"}),
        ("post", "/v1/service-accounts/bot/keys", {"scopes": ["kept"]}),
        ("post", "/v1/users", {"name": "lu", "password": "a-long-passphrase"}),
    ]
    try:
        with gw.api() as api:
            for method, path, body in changes:
                answer = api.request(method.upper(), path, json=body)
                assert answer.status_code == 503, (method, path, answer.text)
                assert "no such table: audit_events" in answer.json()["detail"], answer.text
    finally:
        rename_table(db, "audit_events_away", "audit_events")
    with gw.api() as api:
        assert {c["name"] for c in api.get("/v1/connections").json()} == {"kept"}
        assert [v["version"] for v in api.get("/v1/policy/versions").json()] == [1, 2]
        agents = api.get("/v1/agents").json()
        assert [a["name"] for a in agents] == ["ag"]
        assert {u["name"] for u in api.get("/v1/users").json()} == {"admin", "bot"}
        assert api.get("/v1/credentials", params={"user": "bot"}).json() == []
    assert gw.audit() == before
    wardgate.agent(gw, agent_key, wait="ag")  # its key works: the rotation was not made
    verify_chain(f"sqlite:///{db}")
    assert_not_crashed(gw)


def test_a_revoked_session_ends_while_the_audit_log_is_down(
    wardgate: Wardgate, postgres_server: PostgresServer
) -> None:
    """Revocation fails closed: revoking a credential ends its live session even when the
    `session.terminated` event cannot be written yet; the event follows once it can."""
    roles = [{"name": "ops", "groups": ["ops"], "grants": [{"connection": "*", "access": "admin"}]}]
    gw = wardgate.gateway(
        secret_key=SecretBox.generate_key(), identity={"local_users": True}, roles=roles
    )
    wardgate.agent(gw, gw.create_agent("default"), wait="default")
    target_database(postgres_server, "revokedown", gw)
    token = gw.local_login("opal", ["ops"])
    with gw.api(token) as api:
        login = api.get("/v1/whoami").json()["login"]
        minted = api.post("/v1/credentials/connection", json={"connection": "pg-disk"}).json()
    info = conninfo(gw).replace(f"password={ADMIN_TOKEN}", f"password={minted['token']}")
    db = gw.data_dir / "wardgate.db"
    with psycopg.connect(info.replace("user=admin", "user=opal"), autocommit=True) as conn:
        assert conn.execute("select 'open'").fetchone() == ("open",)
        rename_table(db, "audit_events", "audit_events_away")
        try:
            with gw.api() as api:
                revoked = api.delete(f"/v1/credentials/{login}")
            # Taking access away does not wait on the log: done, and said so.
            assert revoked.status_code == 200, revoked.text
            assert revoked.json()["sessions_ended"] == 1
        finally:
            rename_table(db, "audit_events_away", "audit_events")
        # The log takes writes again: the session must not carry on, unseen by later checks.
        with pytest.raises(psycopg.OperationalError) as cut:
            conn.execute("select 'still here?'")
        assert "credential revoked" in str(cut.value) or "closed" in str(cut.value), cut.value
    ended = wait_for(
        lambda: [e for e in gw.audit("session.terminated") if e["actor"] == "opal"],
        "session.terminated in the audit log once it takes writes",
        60,
    )
    assert [e["data"]["reason"] for e in ended] == ["credential revoked"]
    (kept,) = wait_for(
        lambda: [e for e in gw.audit("credential.revoked") if e["data"].get("login") == login],
        "credential.revoked in the audit log once it takes writes",
        60,
    )
    assert kept["actor"] == "admin" and kept["data"]["sessions_ended"] == 1
    verify_chain(f"sqlite:///{db}")
    assert_not_crashed(gw)
