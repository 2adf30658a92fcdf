"""`wardgate members list`: the gateway processes of the fleet (docs/fleet.md)."""

from __future__ import annotations

import click

from cli import client as cl
from cli import output as out

MEMBER_COLUMNS = [
    out.Column("ID", lambda m: m["id"] + (" (this)" if m["self"] else ""), ident=True),
    out.col("STATE", "state"),
    out.col("PUBLIC", "public_address"),
    out.col("AGENTS", "agent_address"),
    out.col("VERSION", "version"),
    out.when("STARTED", "started_at"),
    out.when("HEARTBEAT", "heartbeat_at"),
    out.Column("GONE", lambda m: m["gone_reason"] or ""),
]


@click.group()
def members() -> None:
    """The gateway processes sharing this gateway's store (administrators)."""


@members.command("list")
@out.output_options
@cl.gateway_options
def members_list(
    output: str | None, gateway: str | None, token: str | None, ca: str | None
) -> None:
    """List the members, live ones first; `(this)` marks the one that answered."""
    with cl.resolve(gateway, token, ca).http() as http:
        data = cl.check(http.get("/v1/members"))
    if not out.structured(data, output):
        out.table(data, MEMBER_COLUMNS)
