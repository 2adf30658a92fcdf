"""Mistakes a user makes against a running gateway: a certificate not trusted, a connection
type nothing serves, `wardgate tcp` on a connection it cannot use, a port in use. Each is a
short message and an exit status, no traceback; and `apply -f` sets the policy comment."""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

import pytest
import yaml

from gateway.crypto import SecretBox
from tests.fixtures.wardgate import WARDGATE, GatewayProc, Wardgate, free_port, port_open

pytestmark = pytest.mark.e2e

SUPPORTED = "tcp, postgres, ssh, kubernetes"


def one_line_error(result: subprocess.CompletedProcess[str], code: int) -> str:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_untrusted_certificate_says_to_set_wardgate_ca(wardgate: Wardgate, tmp_path: Path) -> None:
    gw = wardgate.gateway()
    env = gw.client_env()
    del env["WARDGATE_CA"]
    env["WARDGATE_CONFIG_DIR"] = str(tmp_path / "config")
    result = subprocess.run(
        [*WARDGATE, "whoami"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    line = one_line_error(result, 1)
    assert f"the certificate of the gateway at {gw.url} is not trusted" in line
    assert "set WARDGATE_CA (or pass --ca) to the gateway's CA file" in line


def test_a_connection_type_nothing_serves_is_refused(wardgate: Wardgate) -> None:
    gw = wardgate.gateway()
    result = wardgate.cli(
        gw, "connection", "create", "db", "--type", "mysql", "--host", "h", "--port", "3306"
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "'mysql' is not one of 'tcp', 'postgres', 'ssh', 'kubernetes'" in result.stderr
    with gw.api() as api:
        refused = api.post(
            "/v1/connections", json={"name": "db", "type": "mysql", "host": "h", "port": 3306}
        )
        assert refused.status_code == 422
        assert f"supported types: {SUPPORTED}" in refused.text
        applied = api.post(
            "/v1/apply",
            json={"connections": [{"name": "db", "type": "mysql", "host": "h", "port": 1}]},
        )
        assert applied.status_code == 422 and f"supported types: {SUPPORTED}" in applied.text
        assert api.get("/v1/connections/db").status_code == 404


def tcp_cli(gw: GatewayProc, name: str, port: int, token: str | None = None) -> str:
    result = subprocess.run(
        [*WARDGATE, "tcp", name, "--listen", f"127.0.0.1:{port}"],
        env=gw.client_env(token),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert not port_open(port)
    return one_line_error(result, 1)


def test_tcp_checks_the_connection_before_listening(wardgate: Wardgate) -> None:
    gw = wardgate.gateway(
        secret_key=SecretBox.generate_key(),
        identity={"local_users": True},
        roles=[{"name": "dev", "groups": ["dev"], "grants": [{"connection": "cache"}]}],
    )
    gw.create_connection(name="cache", type="tcp", host="127.0.0.1", port=1)
    gw.create_connection(name="pg", type="postgres", host="127.0.0.1", port=1)
    port = free_port()

    assert "connection 'nope' does not exist" in tcp_cli(gw, "nope", port)
    assert (
        "connection 'pg' is of type postgres; wardgate tcp reaches only tcp connections"
        in tcp_cli(gw, "pg", port)
    )
    alice = gw.local_login("alice", ["dev"])
    # alice's grant is read-only, which cannot be enforced on tcp: the session would fail.
    line = tcp_cli(gw, "cache", port, token=alice)
    assert "you may not use connection 'cache': read-only access cannot be enforced on tcp" in line
    # Nothing was opened, so nothing was refused in the audit log.
    assert not gw.audit("session.refused")


def test_tcp_names_the_address_in_use(wardgate: Wardgate) -> None:
    gw = wardgate.gateway()
    gw.create_connection(name="cache", type="tcp", host="127.0.0.1", port=1)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = wardgate.cli(gw, "tcp", "cache", "--listen", f"127.0.0.1:{port}")
    line = one_line_error(result, 1)
    assert f"cannot listen on 127.0.0.1:{port}: the address is already in use" in line
    assert "pass --listen HOST:PORT with a free port" in line


def test_apply_sets_the_policy_comment_history_shows(wardgate: Wardgate, tmp_path: Path) -> None:
    gw = wardgate.gateway()
    doc = tmp_path / "policy.yaml"
    policy = {"rules": [{"name": "no-ddl", "effect": "deny", "match": {"kinds": ["ddl"]}}]}
    doc.write_text(yaml.safe_dump({"comment": "no DDL until the freeze ends", "policy": policy}))
    applied = wardgate.cli(gw, "apply", "-f", str(doc))
    assert applied.returncode == 0, applied.stderr
    policy["rules"][0]["name"] = "no-ddl-at-all"
    doc.write_text(yaml.safe_dump({"comment": "from the file", "policy": policy}))
    flagged = wardgate.cli(gw, "apply", "-f", str(doc), "--comment", "ticket OPS-12")
    assert flagged.returncode == 0, flagged.stderr
    history = json.loads(wardgate.cli(gw, "policy", "history", "-o", "json").stdout)
    assert [(v["version"], v["comment"]) for v in history] == [
        (1, "no DDL until the freeze ends"),
        (2, "ticket OPS-12"),  # the flag wins over the file
    ]
    table = wardgate.cli(gw, "policy", "history").stdout.splitlines()
    assert table[0].split()[-1] == "COMMENT" and table[-1].endswith("ticket OPS-12"), table

    alone = tmp_path / "alone.yaml"
    alone.write_text("comment: why\nconnections: []\n")
    refused = wardgate.cli(gw, "apply", "-f", str(alone))
    assert refused.returncode == 2 and "a comment goes with a 'policy:'" in refused.stderr
