"""`wardgate reviews ...`, `wardgate request ...`, `wardgate service-account owner ...`.

Each runs as the calling user (flags, WARDGATE_* variables or the stored sign-in, as every
other command) against the approvals API (`gateway/api/reviews.py`).
"""

from __future__ import annotations

import re
from typing import Any

import click

from cli import client as cl
from cli import output as out

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"(\d+)([smhd])")


def parse_duration(text: str) -> int:
    """Seconds in `2h`, `90m`, `1h30m`, `45s`, `1d` (a bare number is seconds)."""
    text = text.strip().lower()
    if text.isdigit():
        return int(text)
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise click.BadParameter(f"{text!r} is not a duration like 2h, 30m or 1h30m")
    return sum(int(n) * _UNITS[u] for n, u in parts)


def _approvers(terms: dict[str, Any]) -> str:
    approvers = terms.get("approvers", {})
    who = [f"group {g}" for g in approvers.get("groups", [])] + [
        f"user {u}" for u in approvers.get("users", [])
    ]
    return f"{terms.get('required')} of {', '.join(who)}"


def _what(r: dict[str, Any]) -> str:
    if r["kind"] == "access":
        return f"{r['access']} for {out.duration(r['duration'])}: {r['reason']}"
    return str(r["text"])


VOTE_COLUMNS = [
    out.col("VOTER", "voter"),
    out.col("VOTE", "vote"),
    out.when("AT", "voted_at"),
    out.col("REASON", "reason"),
]


def _show(review: dict[str, Any]) -> None:
    fields: list[tuple[str, Any]] = [
        ("review", review["id"]),
        ("status", review["status"]),
        ("kind", review["kind"]),
        ("connection", review["connection"]),
        ("requester", review["requester"]),
        ("session", review["session_id"]),
    ]
    if review["text"]:
        fields.append(("command" if review.get("protocol") == "ssh" else "sql", review["text"]))
    fields.append(("reason", review["reason"]))
    if review.get("rules"):
        fields.append(("rules", review["rules"]))
    fields.append(("approvers", _approvers(review["terms"])))
    if review["kind"] == "access":
        fields.append(("access", f"{review['access']} for {out.duration(review['duration'])}"))
    fields += [
        ("created", out.timestamp(review["created_at"])),
        ("deadline", out.timestamp(review["deadline"])),
    ]
    if review["decision"]:
        fields += [
            ("decision", review["decision"]),
            ("decided", out.timestamp(review["decided_at"])),
        ]
    if review.get("grant_expires_at"):
        fields.append(("access until", out.timestamp(review["grant_expires_at"])))
    out.record(fields)
    out.section("votes", review.get("votes") or [], VOTE_COLUMNS)


REVIEW_COLUMNS = [
    out.col("ID", "id", ident=True),
    out.col("STATUS", "status"),
    out.col("KIND", "kind"),
    out.col("REQUESTER", "requester"),
    out.col("CONNECTION", "connection"),
    out.when("CREATED", "created_at"),
    out.when("DEADLINE", "deadline"),
    out.Column("WHAT", _what),
]


@click.group("reviews")
def reviews() -> None:
    """Approvals: held statements and access requests that others review."""


@reviews.command("list")
@click.option("--status", help="pending, approved, denied, expired, cancelled")
@click.option("--kind", type=click.Choice(["statement", "access"]))
@click.option("--mine", is_flag=True, help="Only my own requests.")
@out.output_options
@cl.gateway_options
def reviews_list(
    status: str | None,
    kind: str | None,
    mine: bool,
    output: str | None,
    gateway: str | None,
    token: str | None,
    ca: str | None,
) -> None:
    """Reviews you requested or may approve (administrators: all)."""
    params: dict[str, Any] = {"mine": mine}
    if status:
        params["status"] = status
    if kind:
        params["kind"] = kind
    with cl.resolve(gateway, token, ca).http() as http:
        data = cl.check(http.get("/v1/reviews", params=params))
    if not out.structured(data, output):
        out.table(data, REVIEW_COLUMNS)


@reviews.command("show")
@click.argument("review_id")
@click.option("--wait", type=float, default=0, help="Wait up to this many seconds for a decision.")
@out.output_options
@cl.gateway_options
def reviews_show(
    review_id: str,
    wait: float,
    output: str | None,
    gateway: str | None,
    token: str | None,
    ca: str | None,
) -> None:
    """One review with its votes."""
    with cl.resolve(gateway, token, ca).http() as http:
        data = cl.check(http.get(f"/v1/reviews/{review_id}", params={"wait": wait}))
    if not out.structured(data, output):
        _show(data)


def _vote(vote: str, review_id: str, reason: str, ref: cl.GatewayRef) -> None:
    with ref.http() as http:
        data = cl.check(http.post(f"/v1/reviews/{review_id}/{vote}", json={"reason": reason}))
    click.echo(f"review {data['id']}: {data['status']}")
    if data["decision"]:
        click.echo(f"  {data['decision']}")


@reviews.command("approve")
@click.argument("review_id")
@click.option("--reason", default="", help="Why (recorded in the audit log).")
@cl.gateway_options
def reviews_approve(
    review_id: str, reason: str, gateway: str | None, token: str | None, ca: str | None
) -> None:
    """Approve a review (nobody approves their own)."""
    _vote("approve", review_id, reason, cl.resolve(gateway, token, ca))


@reviews.command("deny")
@click.argument("review_id")
@click.option("--reason", default="", help="Why (told to the requester).")
@cl.gateway_options
def reviews_deny(
    review_id: str, reason: str, gateway: str | None, token: str | None, ca: str | None
) -> None:
    """Deny a review: the held statement is refused, the access request ends."""
    _vote("deny", review_id, reason, cl.resolve(gateway, token, ca))


@click.command("request")
@click.argument("connection")
@click.option("--for", "duration", required=True, help="How long, e.g. 2h, 30m, 1h30m.")
@click.option("--reason", required=True, help="Why you need access (the reviewers read it).")
@click.option("--wait", type=float, default=0, help="Wait up to this many seconds for a decision.")
@out.output_options
@cl.gateway_options
def request(
    connection: str,
    duration: str,
    reason: str,
    wait: float,
    output: str | None,
    gateway: str | None,
    token: str | None,
    ca: str | None,
) -> None:
    """Ask for time-boxed access to CONNECTION; others approve with `wardgate reviews`."""
    seconds = parse_duration(duration)
    ref = cl.resolve(gateway, token, ca)
    with ref.http() as http:
        data = cl.check(
            http.post(
                "/v1/requests",
                json={"connection": connection, "duration": seconds, "reason": reason},
            )
        )
        if wait > 0:
            data = cl.check(http.get(f"/v1/reviews/{data['id']}", params={"wait": wait}))
    if out.structured(data, output):
        return
    click.echo(f"access request {data['id']}: {data['status']}")
    if data["status"] == "pending":
        click.echo(f"  another person approves with: wardgate reviews approve {data['id']}")
    elif data.get("grant_expires_at"):
        click.echo(f"  access to {connection} until {data['grant_expires_at']}")


@click.command("owner")
@click.argument("name")
@click.argument("owner")
@cl.gateway_options
def service_account_owner(
    name: str, owner: str, gateway: str | None, token: str | None, ca: str | None
) -> None:
    """Record OWNER as answering for service account NAME (they count as one for reviews)."""
    with cl.resolve(gateway, token, ca).http() as http:
        data = cl.check(http.post(f"/v1/service-accounts/{name}/owners", json={"owner": owner}))
    click.echo(f"service account {name}: owners {', '.join(data['owners'])}", err=True)


def register(main: click.Group) -> None:
    main.add_command(reviews)
    main.add_command(request)
    service_accounts = main.commands.get("service-account")
    if isinstance(service_accounts, click.Group):
        service_accounts.add_command(service_account_owner)
