"""`wardgate policy show|history|rollback` and `wardgate budgets usage`: policy versions in
the store and exfiltration budget usage (the API in gateway/api/policy.py)."""

from __future__ import annotations

import click
import yaml

from cli import client as cl
from cli import output as out


def _describe(v: dict[str, object]) -> str:
    comment = f"  # {v['comment']}" if v.get("comment") else ""
    return (
        f"version {v['version']}  {v['applied_at']}  by {v['applied_by']}  "
        f"sha256 {str(v['sha256'])[:12]}{comment}"
    )


@click.command("show")
@click.option("--version", "version", type=int, help="A past version (default: in force).")
@out.output_options
@cl.gateway_options
def show(
    version: int | None, output: str | None, gateway: str | None, token: str | None, ca: str | None
) -> None:
    """Print the policy in force (or version N) as YAML, ready for `wardgate apply -f`.

    `-o json|yaml` prints the gateway's data instead: the version, its hash and the policy."""
    path = f"/v1/policy/versions/{version}" if version else "/v1/policy"
    with cl.resolve(gateway, token, ca).http() as http:
        data = cl.check(http.get(path))
    if out.structured(data, output):
        return
    click.echo(f"# {_describe(data)}" if data.get("applied_by") else "# no policy version yet")
    click.echo(yaml.safe_dump({"policy": data["policy"]}, sort_keys=False).rstrip())


HISTORY_COLUMNS = [
    out.num("VERSION", "version"),
    out.when("APPLIED", "applied_at"),
    out.col("BY", "applied_by"),
    out.Column("SHA256", lambda v: str(v["sha256"])[:12]),
    out.col("COMMENT", "comment"),
]


@click.command("history")
@out.output_options
@cl.gateway_options
def history(output: str | None, gateway: str | None, token: str | None, ca: str | None) -> None:
    """List the policy versions, oldest first; the last one is in force."""
    with cl.resolve(gateway, token, ca).http() as http:
        data = cl.check(http.get("/v1/policy/versions"))
    if not out.structured(data, output):
        out.table(data, HISTORY_COLUMNS)


@click.command("rollback")
@click.argument("version", type=int)
@cl.gateway_options
def rollback(version: int, gateway: str | None, token: str | None, ca: str | None) -> None:
    """Put version VERSION's policy back in force, as a new version."""
    with cl.resolve(gateway, token, ca).http() as http:
        data = cl.check(http.post(f"/v1/policy/versions/{version}/rollback"))
    click.echo(f"policy version {data['version']} {data['status']} (from version {version})")


USAGE_COLUMNS = [
    out.col("DAY", "day"),
    out.col("USER", "user"),
    out.col("CONNECTION", "connection"),
    out.col("BUDGET", "budget"),
    out.num("ROWS", "rows"),
    out.num("BYTES", "bytes"),
]


@click.command("usage")
@click.option("--day", help="UTC day YYYY-MM-DD (default: today).")
@click.option("--user")
@click.option("--connection")
@out.output_options
@cl.gateway_options
def usage(
    day: str | None,
    user: str | None,
    connection: str | None,
    output: str | None,
    gateway: str | None,
    token: str | None,
    ca: str | None,
) -> None:
    """Exfiltration budget usage of a day."""
    params = {k: v for k, v in (("day", day), ("user", user), ("connection", connection)) if v}
    with cl.resolve(gateway, token, ca).http() as http:
        data = cl.check(http.get("/v1/budgets/usage", params=params))
    if not out.structured(data, output):
        out.table(data, USAGE_COLUMNS)


def register(main: click.Group, policy: click.Group) -> None:
    """Hang these commands on `wardgate policy` and a new `wardgate budgets` group."""
    for command in (show, history, rollback):
        policy.add_command(command)
    budgets = click.Group("budgets", help="Exfiltration budgets: rows and bytes per day.")
    budgets.add_command(usage)
    main.add_command(budgets)
