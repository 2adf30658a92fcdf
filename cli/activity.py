"""`wardgate sessions` and `wardgate audit`: what went through the gateway, read back."""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path
from typing import Any

import click

from cli import client as cl
from cli import output as out
from cli import ssh as ssh_cli
from cli.errors import Problem

PAGE = 1000  # the most rows the gateway returns at once


@click.group()
def sessions() -> None:
    """Sessions through the gateway."""


def _lasted(s: dict[str, Any]) -> str:
    if not s.get("ended_at"):
        return "open"
    started = dt.datetime.fromisoformat(s["started_at"])
    return out.duration((dt.datetime.fromisoformat(s["ended_at"]) - started).total_seconds())


SESSION_COLUMNS = [
    out.col("ID", "id", ident=True),
    out.col("USER", "user"),
    out.col("CONNECTION", "connection"),
    out.col("PROTOCOL", "protocol"),
    out.when("STARTED", "started_at"),
    out.Column("DURATION", _lasted),
    out.col("STATUS", "status"),
    out.Column("UP", lambda s: out.size(s["bytes_up"]), justify="right"),
    out.Column("DOWN", lambda s: out.size(s["bytes_down"]), justify="right"),
    out.col("CLIENT", "client"),
]
STATEMENT_COLUMNS = [
    out.num("SEQ", "seq"),
    out.Column("TIME", lambda st: out.clock(st["ts"])),
    out.Column("RESULT", lambda st: st["sqlstate"] or st["tags"]),
    out.num("ROWS", "rows"),
    out.num("MS", "duration_ms"),
    out.col("SQL", "text"),
]
MASKED_COLUMNS = [
    out.col("COLUMN", "column"),
    out.col("DETECTOR", "detector"),
    out.num("COUNT", "count"),
]


def _command_result(c: dict[str, Any]) -> str:
    if c.get("refused"):
        return f"refused: {c['refused']}"
    if c.get("exit_signal"):
        return f"signal {c['exit_signal']}"
    return out.cell(c.get("exit_status"))


COMMAND_COLUMNS = [
    out.num("SEQ", "seq"),
    out.Column("TIME", lambda c: out.clock(c["ts"])),
    out.num("CHANNEL", "channel"),
    out.col("REQUEST", "request"),
    out.Column("EXIT", _command_result),
    out.col("COMMAND", "command"),
]
TRANSFER_COLUMNS = [
    out.num("SEQ", "seq"),
    out.Column("TIME", lambda t: out.clock(t["ts"])),
    out.num("CHANNEL", "channel"),
    out.col("OP", "op"),
    out.Column("SIZE", lambda t: out.size(t["bytes"]), justify="right"),
    out.col("SHA256", "sha256"),
    out.Column("PATH", lambda t: f"{t['path']} -> {t['target']}" if t.get("target") else t["path"]),
]
FORWARD_COLUMNS = [
    out.num("SEQ", "seq"),
    out.Column("TIME", lambda f: out.clock(f["ts"])),
    out.num("CHANNEL", "channel"),
    out.Column("DESTINATION", lambda f: f"{f['host']}:{f['port']}"),
]


@sessions.command("list")
@click.option("--user")
@click.option("--connection")
@click.option("--since", help="ISO time, e.g. 2026-11-26T10:00:00+00:00")
@click.option("--text", help="Only sessions with a statement containing this text.")
@click.option(
    "--limit",
    default=50,
    show_default=True,
    type=click.IntRange(min=1),
    help="How many sessions to list; more than a page (1000) are fetched page by page.",
)
@click.option("--all", "everything", is_flag=True, help="Every matching session (no --limit).")
@out.output_options
@cl.gateway_options
def sessions_list(
    user: str | None,
    connection: str | None,
    since: str | None,
    text: str | None,
    limit: int,
    everything: bool,
    output: str | None,
    gateway: str | None,
    token: str | None,
    ca: str | None,
) -> None:
    """List sessions, newest first (filter by user, connection, time, statement text)."""
    params: dict[str, Any] = {"limit": min(limit, PAGE) if not everything else PAGE}
    for key, value in (
        ("user", user),
        ("connection", connection),
        ("since", since),
        ("text", text),
    ):
        if value:
            params[key] = value
    wanted = None if everything else limit
    with cl.resolve(gateway, token, ca).http() as http:
        data = cl.paged(http, "/v1/sessions", params, wanted)
    if not out.structured(data, output):
        out.table(data, SESSION_COLUMNS)


@sessions.command("show")
@click.argument("session_id")
@out.output_options
@cl.gateway_options
def sessions_show(
    session_id: str, output: str | None, gateway: str | None, token: str | None, ca: str | None
) -> None:
    """Show one session and what it did: statements, or SSH commands and file transfers."""
    with cl.resolve(gateway, token, ca).http() as http:
        data = cl.check(http.get(f"/v1/sessions/{session_id}"))
    if out.structured(data, output):
        return
    out.record(
        [
            ("id", data["id"]),
            ("user", data["user"]),
            ("connection", data["connection"]),
            ("protocol", data["protocol"]),
            ("client", data["client"]),
            ("agent", data["agent"]),
            ("started", out.timestamp(data["started_at"])),
            ("ended", out.timestamp(data["ended_at"])),
            ("duration", _lasted(data)),
            ("status", data["status"]),
            ("error", data["error"]),
            ("traffic", f"{out.size(data['bytes_up'])} up, {out.size(data['bytes_down'])} down"),
        ]
    )
    out.section("statements", data.get("statements") or [], STATEMENT_COLUMNS)
    out.section("masked values", data.get("masked") or [], MASKED_COLUMNS)
    out.section("commands", data.get("commands") or [], COMMAND_COLUMNS)
    out.section("file transfers", data.get("transfers") or [], TRANSFER_COLUMNS)
    out.section("port forwards", data.get("forwards") or [], FORWARD_COLUMNS)


@sessions.command("kill")
@click.argument("session_id")
@click.option("--reason", help='Why; its client is told ("terminated by an administrator: ...").')
@out.output_options
@cl.gateway_options
def sessions_kill(
    session_id: str,
    reason: str | None,
    output: str | None,
    gateway: str | None,
    token: str | None,
    ca: str | None,
) -> None:
    """End a live session now, on whichever gateway member runs it (administrators)."""
    with cl.resolve(gateway, token, ca).http() as http:
        body = {"reason": reason} if reason else {}
        data = cl.check(http.post(f"/v1/sessions/{session_id}/terminate", json=body))
    if not out.structured(data, output):
        click.echo(f"session {data['session']} terminated (on member {data['member']})")


@sessions.command("replay")
@click.argument("session_id")
@click.option("--channel", type=int, help="Which terminal channel (default: the first).")
@click.option("--speed", default=1.0, show_default=True, help="Playback speed factor.")
@click.option("--max-idle", default=2.0, show_default=True, help="Cap pauses at N seconds.")
@click.option("--export", type=click.Path(path_type=Path), help="Write the .cast file instead.")
@cl.gateway_options
def sessions_replay(
    session_id: str,
    channel: int | None,
    speed: float,
    max_idle: float,
    export: Path | None,
    gateway: str | None,
    token: str | None,
    ca: str | None,
) -> None:
    """Play an SSH terminal recording back (asciicast v2), or export it."""
    ssh_cli.replay(
        cl.resolve(gateway, token, ca),
        session_id,
        channel=channel,
        speed=max(speed, 0.001),
        max_idle=max_idle,
        export=export,
    )


@click.group()
def audit() -> None:
    """The tamper-evident audit log."""


AUDIT_COLUMNS = [
    out.num("SEQ", "seq"),
    out.when("TIME", "ts"),
    out.col("KIND", "kind"),
    out.col("ACTOR", "actor"),
    out.col("SESSION", "session", ident=True),
    out.col("DATA", "data"),
]


@audit.command("list")
@click.option("--kind")
@click.option("--session", "session_id", help="Only the events of this session.")
@click.option("--text", help="Only events whose data contains this text.")
@click.option("--after", default=0)
@out.output_options
@cl.gateway_options
def audit_list(
    kind: str | None,
    session_id: str | None,
    text: str | None,
    after: int,
    output: str | None,
    gateway: str | None,
    token: str | None,
    ca: str | None,
) -> None:
    """List audit events, oldest first."""
    params: dict[str, Any] = {"after": after}
    for key, value in (("kind", kind), ("session", session_id), ("text", text)):
        if value:
            params[key] = value
    with cl.resolve(gateway, token, ca).http() as http:
        data = cl.check(http.get("/v1/audit", params=params))
    if not out.structured(data, output):
        out.table(data, AUDIT_COLUMNS)


def _shown(store_url: str) -> str:
    """The store URL without its password, for messages."""
    import sqlalchemy as sa

    try:
        return sa.make_url(store_url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return "the store"


@audit.command("verify")
@click.option(
    "--store",
    "store_url",
    help="Verify a store directly (offline), e.g. "
    "sqlite:///.wardgate/wardgate.db or a postgresql+psycopg:// URL.",
)
@cl.gateway_options
def audit_verify(
    store_url: str | None, gateway: str | None, token: str | None, ca: str | None
) -> None:
    """Check the audit hash chain; exits 1 saying which event was edited or is missing."""
    if store_url:
        from gateway.store import Store, StoreError

        try:  # read-only: verifying never migrates or writes the store it checks
            with Store.open_read_only(store_url) as store:
                data = store.audit.check().as_dict()
        except StoreError as exc:
            raise Problem(f"cannot verify {_shown(store_url)}: {exc}") from None
    else:
        with cl.resolve(gateway, token, ca).http() as http:
            data = cl.check(http.get("/v1/audit/verify"))
    checked = data.get("checked")  # absent from gateways before issue 13
    counted = "" if checked is None else f"{checked} event{'' if checked == 1 else 's'} checked"
    if data["intact"]:
        click.echo(f"audit log intact: {counted}" if counted else "audit log intact")
        return
    detail = data.get("detail") or f"first bad event is seq {data['first_bad_seq']}"
    click.echo(f"audit log TAMPERED: {detail}" + (f" ({counted})" if counted else ""), err=True)
    sys.exit(1)


@audit.command("verify-export")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
def audit_verify_export(file: Path) -> None:
    """Check a session export from the console offline: every event against its chain hash,
    every recording against the SHA-256 its event holds; exits 1 naming what was edited."""
    from gateway.store.export import ExportError, verify

    try:
        raw = file.read_bytes()
    except OSError as exc:
        raise Problem(f"cannot read {file}: {exc.strerror or exc}") from None
    try:
        checked = verify(raw)
    except ExportError as exc:
        raise Problem(f"{file}: {exc}") from None
    counted = f"{checked.events} events, {checked.recordings} recordings checked"
    if checked.intact:
        click.echo(f"session export intact: {counted}")
        return
    for problem in checked.problems:
        click.echo(f"session export TAMPERED: {problem}", err=True)
    click.echo(counted, err=True)
    sys.exit(1)


def register(main: click.Group) -> None:
    main.add_command(sessions)
    main.add_command(audit)
