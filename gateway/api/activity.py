"""What a session did, read back from its audit events, for `GET /v1/sessions/{id}` and the
console's session page (gateway/api/search.py puts them together)."""

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


def pg_activity(events: list[AuditEvent]) -> dict[str, list[dict[str, Any]]]:
    """What a PostgreSQL session did: its statements with their results (rows, error,
    duration, the values masked at the agent), the statements policy refused, and the
    masking counts of the whole session."""
    results = {e.data.get("statement_seq"): e.data for e in events if e.kind == "pg.result"}
    statements = []
    refused = []
    for e in events:
        if e.kind == "pg.refused":
            refused.append(
                {
                    "seq": e.seq,
                    "ts": e.ts.isoformat(),
                    "text": e.data.get("text"),
                    "reason": e.data.get("reason"),
                    "rules": e.data.get("rules", []),
                }
            )
        if e.kind != "pg.statement":
            continue
        result = results.get(e.seq, {})
        statements.append(
            {
                "seq": e.seq,
                "ts": e.ts.isoformat(),
                "text": e.data.get("text"),
                "protocol": e.data.get("protocol"),
                "params": e.data.get("params"),
                "tags": result.get("tags"),
                "rows": result.get("rows"),
                "sqlstate": result.get("sqlstate"),
                "error": result.get("error"),
                "duration_ms": result.get("duration_ms"),
                "masked": result.get("masked", []),
            }
        )
    masked: dict[tuple[str, str], int] = {}  # values masked at the agent
    for e in events:
        # Counts ride in the result of the statement whose bytes they end (pg.result),
        # or come on their own (pg.masked: from an older agent, or between statements).
        if e.kind in ("pg.masked", "pg.result"):
            for c in e.data.get("counts", e.data.get("masked", [])):
                key = (c["column"], c["detector"])
                masked[key] = masked.get(key, 0) + int(c["count"])
    return {
        "statements": statements,
        "refused": refused,
        "masked": [
            {"column": c, "detector": d, "count": n} for (c, d), n in sorted(masked.items())
        ],
    }


def k8s_activity(events: list[AuditEvent]) -> dict[str, list[dict[str, Any]]]:
    """A Kubernetes session's requests with the policy's decision and the response (a
    session carries one request; its response event follows it)."""
    requests: list[dict[str, Any]] = []
    for e in events:
        d = e.data
        if e.kind == "k8s.request":
            requests.append(
                {
                    "seq": e.seq,
                    "ts": e.ts.isoformat(),
                    "verb": d.get("verb"),
                    "path": d.get("path"),
                    "namespace": d.get("namespace"),
                    "resource": d.get("resource"),
                    "name": d.get("name"),
                    "command": d.get("command"),
                    "decision": d.get("decision"),
                    "reason": d.get("reason"),
                    "review": d.get("review"),
                    "status": None,
                    "bytes": None,
                    "masked": None,
                    "error": None,
                }
            )
        elif e.kind == "k8s.response" and requests:
            requests[-1].update(
                status=d.get("status"),
                bytes=d.get("bytes"),
                masked=d.get("masked"),
                error=d.get("error"),
            )
    return {"kubernetes": requests}
