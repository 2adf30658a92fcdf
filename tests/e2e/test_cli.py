"""The commands a user types: `wardgate dev`, connection management, apply, audit."""

from __future__ import annotations

import os
import re
import socket
import ssl
import stat
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.fixtures.postgres import PostgresServer
from tests.fixtures.servers import EchoServer
from tests.fixtures.wardgate import WARDGATE, Proc, Wardgate, free_port, wait_for

pytestmark = pytest.mark.e2e


def test_dev_runs_gateway_and_embedded_agent_with_printed_admin_token(
    tmp_path: Path, echo_server: EchoServer
) -> None:
    public, agent = free_port(), free_port()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("WARDGATE_ADMIN_TOKEN", None)
    dev = Proc(
        [
            *WARDGATE,
            "dev",
            "--data-dir",
            str(tmp_path / "wg"),
            "--listen",
            f"127.0.0.1:{public}",
            "--agent-listen",
            f"127.0.0.1:{agent}",
        ],
        tmp_path / "dev.log",
        env,
    ).start()
    try:
        token = wait_for(
            lambda: re.search(r"admin token: (wgt_\S+)", dev.log()), "the printed admin token"
        ).group(1)
        env_file = tmp_path / "wg" / "env"
        assert f"WARDGATE_TOKEN={token}" in env_file.read_text()
        client_env = dict(
            os.environ,
            WARDGATE_URL=f"https://127.0.0.1:{public}",
            WARDGATE_TOKEN=token,
            WARDGATE_CA=str(tmp_path / "wg" / "tls" / "ca.pem"),
        )

        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [*WARDGATE, *args],
                env=client_env,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )

        wait_for(
            lambda: re.search(r"^default\s+default\s+connected", cli("agent", "list").stdout, re.M),
            "the embedded agent",
        )
        created = cli(
            "connection", "create", "echo", "--host", "127.0.0.1", "--port", str(echo_server.port)
        )
        assert created.returncode == 0, created.stderr
        port = free_port()
        tcp = Proc(
            [*WARDGATE, "tcp", "echo", "--listen", f"127.0.0.1:{port}"],
            tmp_path / "tcp.log",
            client_env,
        ).start()
        try:
            wait_for(lambda: f"echo on 127.0.0.1:{port}" in tcp.log(), "wardgate tcp")
            with socket.create_connection(("127.0.0.1", port), timeout=30) as c:
                c.sendall(b"through the embedded agent")
                c.shutdown(socket.SHUT_WR)
                assert c.recv(100) == b"through the embedded agent"
        finally:
            tcp.stop()
    finally:
        assert dev.stop() == 0, dev.log()
    # A second start on the same data dir keeps the token: shells that sourced the env file
    # (and ~/.pgpass entries made with it) go on working.
    assert stat.S_IMODE((tmp_path / "wg" / "admin-token").stat().st_mode) == 0o600
    dev2 = Proc(dev.args, tmp_path / "dev2.log", env).start()
    try:
        token2 = wait_for(
            lambda: re.search(r"admin token: (wgt_\S+)", dev2.log()), "the second admin token"
        ).group(1)
        assert token2 == token
        assert "signed in as admin" in dev2.log()
        ca = ssl.create_default_context(cafile=str(tmp_path / "wg" / "tls" / "ca.pem"))
        with httpx.Client(base_url=f"https://127.0.0.1:{public}", verify=ca) as api:
            who = api.get("/v1/whoami", headers={"Authorization": f"Bearer {token}"})
        assert who.status_code == 200 and who.json()["user"] == "admin"
        # The env file alone makes the CLI usable, from a shell whose PATH lacks the venv.
        assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
        bare = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8"}
        sourced = subprocess.run(
            ["bash", "-c", f"source {env_file} && wardgate whoami"],
            env=bare,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert sourced.returncode == 0, sourced.stderr
        assert "admin" in sourced.stdout
    finally:
        assert dev2.stop() == 0, dev2.log()


def test_connection_commands_and_idempotent_apply(wardgate: Wardgate, tmp_path: Path) -> None:
    gw = wardgate.gateway()
    spec = tmp_path / "conns.yaml"
    spec.write_text(
        "connections:\n"
        "  - name: pg-main\n    type: postgres\n    agent: default\n    host: 10.0.0.5\n"
        "    port: 5432\n    database: app\n    username: app_rw\n"
        "    password: env:APP_DB_PASSWORD\n"
        "  - name: cache\n    type: tcp\n    host: 10.0.0.7\n    port: 6379\n"
    )
    first = wardgate.cli(gw, "apply", "-f", str(spec))
    assert first.returncode == 0, first.stderr
    assert first.stdout.split("\n")[:2] == [
        "connection pg-main created",
        "connection cache created",
    ]
    again = wardgate.cli(gw, "apply", "-f", str(spec))
    assert "connection pg-main unchanged" in again.stdout
    assert "connection cache unchanged" in again.stdout

    listed = wardgate.cli(gw, "connection", "list")
    assert re.search(r"cache\s+tcp\s+10.0.0.7:6379", listed.stdout)
    shown = wardgate.cli(gw, "connection", "show", "pg-main")
    assert "env:APP_DB_PASSWORD" in shown.stdout and re.search(r"database:\s+app", shown.stdout)

    literal = wardgate.cli(
        gw, "connection", "create", "lit", "--host", "h", "--port", "1", "--password", "hunter2"
    )
    assert literal.returncode != 0 and "secret_key" in literal.stderr

    assert wardgate.cli(gw, "connection", "delete", "cache").returncode == 0
    missing = wardgate.cli(gw, "connection", "show", "cache")
    assert missing.returncode != 0 and "does not exist" in missing.stderr

    verify = wardgate.cli(gw, "audit", "verify")
    assert verify.returncode == 0
    assert re.fullmatch(r"audit log intact: \d+ events checked\n", verify.stdout), verify.stdout
    kinds = [e["kind"] for e in gw.audit()]
    assert kinds.count("connection.created") == 2 and "connection.deleted" in kinds


def test_literal_secret_is_stored_encrypted_when_the_gateway_has_a_key(
    wardgate: Wardgate,
) -> None:
    from gateway.crypto import SecretBox

    gw = wardgate.gateway(secret_key=SecretBox.generate_key())
    made = wardgate.cli(
        gw, "connection", "create", "lit", "--host", "h", "--port", "1", "--password", "hunter2"
    )
    assert made.returncode == 0, made.stderr
    shown = wardgate.cli(gw, "connection", "show", "lit")
    assert "(encrypted)" in shown.stdout and "hunter2" not in shown.stdout
    db = (gw.data_dir / "wardgate.db").read_bytes()
    assert b"hunter2" not in db


def test_unknown_token_is_refused_and_audited_nowhere_in_clear(wardgate: Wardgate) -> None:
    gw = wardgate.gateway()
    bad = wardgate.cli(gw, "connection", "list", token="wgt_not-a-real-token")
    assert bad.returncode != 0 and "401" in bad.stderr and "not recognised" in bad.stderr
    assert "wgt_not-a-real-token" not in gw.log(tail=10_000)


def test_gateway_on_a_postgresql_store(
    wardgate: Wardgate, postgres_db: PostgresServer, echo_server: EchoServer
) -> None:
    from gateway.crypto import SecretBox

    # A shared store keeps the fleet's identity sealed: it needs the secret key.
    gw = wardgate.gateway(store=postgres_db.url(), secret_key=SecretBox.generate_key())
    wardgate.agent(gw, gw.create_agent("default"), wait="default")
    gw.create_connection(name="echo", host="127.0.0.1", port=echo_server.port)
    _, port = wardgate.tcp(gw, "echo")
    with socket.create_connection(("127.0.0.1", port), timeout=30) as c:
        c.sendall(b"stored in postgres")
        c.shutdown(socket.SHUT_WR)
        assert c.recv(100) == b"stored in postgres"
    wait_for(lambda: any(e["kind"] == "session.close" for e in gw.audit()), "session.close")
    with postgres_db.connect() as conn:
        kinds = [r[0] for r in conn.execute("select kind from audit_events order by seq")]
    assert "session.open" in kinds and "session.close" in kinds
    assert not (gw.data_dir / "wardgate.db").exists()
    assert wardgate.cli(gw, "audit", "verify").returncode == 0


def test_plaintext_agents_need_both_the_gateway_setting_and_the_agent_flag(
    wardgate: Wardgate, echo_server: EchoServer
) -> None:
    gw = wardgate.gateway(allow_insecure_agents=True)
    key = gw.create_agent("default")
    assert "insecure=1" in key and "ca=" not in key
    refused = wardgate.agent(gw, key)
    assert (
        wait_for(
            lambda: refused.proc is not None and refused.proc.poll() is not None,
            "the agent without --insecure to stop",
        )
        is not None
    )
    assert refused.proc is not None and refused.proc.returncode == 2
    assert "--insecure" in refused.log()
    wardgate.agent(gw, key, "--insecure", wait="default")
    gw.create_connection(name="echo", host="127.0.0.1", port=echo_server.port)
    _, port = wardgate.tcp(gw, "echo")
    with socket.create_connection(("127.0.0.1", port), timeout=30) as c:
        c.sendall(b"over a plaintext tunnel")
        c.shutdown(socket.SHUT_WR)
        assert c.recv(100) == b"over a plaintext tunnel"
