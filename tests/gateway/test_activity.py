"""An SSH session's commands, transfers and forwards, read back from its audit events."""

from __future__ import annotations

import datetime as dt
from typing import Any

from gateway.api.activity import k8s_activity, ssh_activity
from gateway.store import AuditEvent

T0 = dt.datetime(2026, 12, 7, 12, 0, tzinfo=dt.UTC)


def _events(*specs: tuple[str, dict[str, Any]]) -> list[AuditEvent]:
    return [
        AuditEvent(i + 1, T0 + dt.timedelta(seconds=i), kind, "alice", "s1", data, b"", b"")
        for i, (kind, data) in enumerate(specs)
    ]


def test_commands_carry_their_exit_and_refusals_are_listed() -> None:
    got = ssh_activity(
        _events(
            ("session.open", {"connection": "web-1"}),
            ("ssh.exec", {"channel": 0, "command": "uname -a", "pty": False, "scp": False}),
            ("ssh.shell", {"channel": 1, "pty": True}),
            (
                "ssh.refused",
                {"channel": 2, "request": "exec", "command": "rm -rf /", "reason": "no"},
            ),
            ("ssh.exit", {"channel": 0, "command": "uname -a", "status": 0}),
            ("ssh.exit", {"channel": 1, "command": None, "signal": "KILL"}),
            ("ssh.refused", {"client": "1.2.3.4", "reason": "auth: bad"}),  # no request: not one
        )
    )
    assert [
        (c["seq"], c["request"], c["command"], c["exit_status"], c["exit_signal"], c["refused"])
        for c in got["commands"]
    ] == [
        (2, "exec", "uname -a", 0, None, None),
        (3, "shell", None, None, "KILL", None),
        (4, "exec", "rm -rf /", None, None, "no"),
    ]
    assert got["commands"][0]["ts"] == (T0 + dt.timedelta(seconds=1)).isoformat()
    assert got["transfers"] == [] and got["forwards"] == []


def test_transfers_file_operations_and_forwards() -> None:
    got = ssh_activity(
        _events(
            ("ssh.subsystem", {"channel": 0, "name": "sftp"}),
            (
                "ssh.transfer",
                {
                    "channel": 0,
                    "path": "/srv/a.bin",
                    "direction": "download",
                    "uploaded": 0,
                    "downloaded": 2048,
                    "sha256": "ab" * 32,
                },
            ),
            ("ssh.file_op", {"channel": 0, "op": "rename", "path": "/a", "target": "/b"}),
            ("ssh.forward", {"channel": 3, "host": "db.internal", "port": 5432}),
        )
    )
    assert [(c["request"], c["command"]) for c in got["commands"]] == [("subsystem", "sftp")]
    assert [(t["op"], t["path"], t["target"], t["bytes"]) for t in got["transfers"]] == [
        ("download", "/srv/a.bin", None, 2048),
        ("rename", "/a", "/b", None),
    ]
    assert [(f["host"], f["port"]) for f in got["forwards"]] == [("db.internal", 5432)]


def test_other_protocols_have_no_ssh_activity() -> None:
    got = ssh_activity(_events(("pg.statement", {"text": "select 1"})))
    assert got == {"commands": [], "transfers": [], "forwards": []}


def test_a_reused_channel_id_gets_each_commands_own_exit() -> None:
    got = ssh_activity(
        _events(
            ("ssh.exec", {"channel": 0, "command": "false"}),
            ("ssh.exit", {"channel": 0, "status": 1}),
            ("ssh.exec", {"channel": 0, "command": "true"}),
            ("ssh.exit", {"channel": 0, "status": 0}),
        )
    )
    assert [(c["command"], c["exit_status"]) for c in got["commands"]] == [
        ("false", 1),
        ("true", 0),
    ]


def test_kubernetes_requests_carry_their_decision_and_response() -> None:
    got = k8s_activity(
        _events(
            ("session.open", {"connection": "k8s"}),
            (
                "k8s.request",
                {"verb": "get", "path": "/api/v1/pods", "decision": "allow", "reason": "grant"},
            ),
            ("k8s.response", {"status": 200, "bytes": 512, "masked": 3, "error": None}),
            ("k8s.request", {"verb": "delete", "path": "/api/v1/pods/x", "decision": "deny"}),
        )
    )
    assert [
        (k["seq"], k["verb"], k["decision"], k["status"], k["bytes"], k["masked"])
        for k in got["kubernetes"]
    ] == [(2, "get", "allow", 200, 512, 3), (4, "delete", "deny", None, None, None)]
