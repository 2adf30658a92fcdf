"""What a session did, read back from its audit events, for `GET /v1/sessions/{id}`."""

from __future__ import annotations

from typing import Any

from gateway.store import AuditEvent

_SSH_REQUESTS = {"ssh.exec": "exec", "ssh.shell": "shell", "ssh.subsystem": "subsystem"}


def ssh_activity(events: list[AuditEvent]) -> dict[str, list[dict[str, Any]]]:
    """What an SSH session did, from its audit events: the commands (exec, shell, subsystem,
    and the refused ones) with their exit, the files moved over scp/sftp and file operations,
    and port forwards. Empty lists for other protocols."""
    commands: list[dict[str, Any]] = []
    transfers: list[dict[str, Any]] = []
    forwards: list[dict[str, Any]] = []
    running: dict[Any, dict[str, Any]] = {}  # channel -> its command (channel ids are reused)
    for e in events:
        d = e.data
        base = {"seq": e.seq, "ts": e.ts.isoformat(), "channel": d.get("channel")}
        if e.kind in _SSH_REQUESTS:
            running[d.get("channel")] = command = {
                **base,
                "request": _SSH_REQUESTS[e.kind],
                "command": d.get("command") if e.kind == "ssh.exec" else d.get("name"),
                "pty": d.get("pty"),
                "review": d.get("review"),
                "refused": None,
                "exit_status": None,
                "exit_signal": None,
            }
            commands.append(command)
        elif e.kind == "ssh.exit" and d.get("channel") in running:
            ended = running.pop(d.get("channel"))
            ended["exit_status"] = d.get("status")
            ended["exit_signal"] = d.get("signal")
        elif e.kind == "ssh.refused" and d.get("request"):
            commands.append(
                {
                    **base,
                    "request": d["request"],
                    "command": d.get("command"),
                    "pty": None,
                    "review": None,
                    "refused": d.get("reason"),
                    "exit_status": None,
                    "exit_signal": None,
                }
            )
        elif e.kind == "ssh.transfer":
            upload = d.get("direction") == "upload"
            transfers.append(
                {
                    **base,
                    "op": d.get("direction"),
                    "path": d.get("path"),
                    "target": None,
                    "bytes": d.get("uploaded") if upload else d.get("downloaded"),
                    "sha256": d.get("sha256"),
                }
            )
        elif e.kind == "ssh.file_op":
            transfers.append(
                {
                    **base,
                    "op": d.get("op"),
                    "path": d.get("path"),
                    "target": d.get("target"),
                    "bytes": None,
                    "sha256": None,
                }
            )
        elif e.kind == "ssh.forward":
            forwards.append({**base, "host": d.get("host"), "port": d.get("port")})
    return {"commands": commands, "transfers": transfers, "forwards": forwards}
