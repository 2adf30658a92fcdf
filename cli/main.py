"""The `wardgate` command tree. Command, flag and file names here are a public interface."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import click
import httpx
import yaml

import cli.runtime  # noqa: F401 - sets grpc tuning before anything imports grpc
from cli import activity
from cli import client as cl
from cli import members as members_cli
from cli import output as out
from cli import policy as policy_commands
from cli import reviews as reviews_cli
from cli import ssh as ssh_cli
from cli import workers as workers_cli
from cli.errors import UsageProblem, WardgateGroup
from cli.kube import kube as kube_commands
from cli.runtime import BULK, LOG_FORMATS, MANY_CONNECTIONS, run, set_log_format, setup_logging
from gateway.conntypes import SUPPORTED_TYPES
from gateway.identity.local import MIN_PASSWORD_LENGTH
from shared.connect import conninfo, libpq_params


def _ref(gateway: str | None, token: str | None, ca: str | None) -> cl.GatewayRef:
    return cl.resolve(gateway, token, ca)


@click.group(cls=WardgateGroup)
@click.option("--log-level", default="info", show_default=True, envvar="WARDGATE_LOG_LEVEL")
@click.option(
    "--debug",
    is_flag=True,
    envvar="WARDGATE_DEBUG",
    help="Show the full traceback when a command fails (or WARDGATE_DEBUG=1).",
)
@click.version_option(package_name="wardgate")
def main(log_level: str, debug: bool) -> None:
    """Wardgate: identity-aware access gateway."""
    setup_logging(log_level)


# ---- servers ---------------------------------------------------------------------------


def _announce(started: Any, url: str) -> None:
    click.echo(f"Wardgate gateway on https://{url}", err=True)
    click.echo(
        f"  agents connect to {started.agent_address[0]}:{started.agent_address[1]}", err=True
    )
    click.echo(f"  CA {started.ca_path} ({started.ca_fingerprint})", err=True)
    click.echo(f"  SSH host key {started.ssh_fingerprint}", err=True)
    click.echo(f"  SSH user CA {started.ssh_user_ca}", err=True)
    for name, key in started.agent_keys.items():
        click.echo(f"  agent {name} created; its key (shown once): {key}", err=True)


async def _start(gw: Any) -> Any:
    """Start the gateway; one that fails half-way closes what it opened (the store) first."""
    try:
        return await gw.start()
    except BaseException:
        await gw.aclose()
        raise


F = TypeVar("F", bound=Callable[..., Any])


def _log_format_option(default: str | None) -> Callable[[F], F]:
    return click.option(
        "--log-format",
        type=click.Choice(LOG_FORMATS),
        default=default,
        envvar="WARDGATE_LOG_FORMAT",
        show_default=default is not None,
        help="Log lines as text, or as one JSON object per line (or WARDGATE_LOG_FORMAT).",
    )


@main.command()
@click.option("--config", "config_path", type=click.Path(exists=True, path_type=Path))
@click.option("--listen", help="Public endpoint HOST:PORT (default 0.0.0.0:8443).")
@click.option("--agent-listen", help="Agent endpoint HOST:PORT (default 0.0.0.0:8444).")
@click.option("--data-dir", type=click.Path(path_type=Path))
@_log_format_option(None)  # default: the config's `log_format` (text)
@click.option(
    "--drain-grace",
    type=click.FloatRange(min=0),
    metavar="SECONDS",
    help="Seconds live sessions get to finish after SIGTERM before they are ended "
    "(config drain_grace, default 30); a second SIGTERM stops at once.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1, max=256),
    metavar="N",
    help="Gateway processes sharing the public port, one supervisor (config workers, "
    "default 1); worker i takes agents on the agent port + i. More than one needs a "
    "PostgreSQL store.",
)
# A worker of `--workers` (cli/workers.py): set by the supervisor, not by people.
@click.option("--worker", "worker_index", type=int, hidden=True)
@click.option("--ready-fd", type=int, hidden=True)
@click.option("--supervisor-pid", type=int, hidden=True)
@click.option("--quiet", is_flag=True, hidden=True)
def gateway(
    config_path: Path | None,
    listen: str | None,
    agent_listen: str | None,
    data_dir: Path | None,
    log_format: str | None,
    drain_grace: float | None,
    workers: int | None,
    worker_index: int | None,
    ready_fd: int | None,
    supervisor_pid: int | None,
    quiet: bool,
) -> None:
    """Run the gateway."""
    from gateway.config import load_config

    cfg = load_config(
        config_path,
        listen=listen,
        agent_listen=agent_listen,
        data_dir=data_dir,
        log_format=log_format,
        drain_grace=drain_grace,
        workers=workers,
    )
    if cfg.workers > 1 and worker_index is None:
        given: list[tuple[str, object | None]] = [
            ("--config", config_path),
            ("--data-dir", data_dir),
            ("--log-format", log_format),
            ("--drain-grace", drain_grace),
        ]
        sys.exit(_supervise(cfg, workers_cli.worker_options(given)))
    if supervisor_pid is not None:
        workers_cli.follow_supervisor(supervisor_pid)
    set_log_format(cfg.log_format, worker=worker_index)
    stop = asyncio.Event()  # the first SIGTERM/SIGINT: drain, then stop

    async def serve() -> None:
        from gateway.app import Gateway

        gw = Gateway(cfg, worker=worker_index)
        started = await _start(gw)
        host, port = started.public_address
        if not quiet:
            _announce(started, f"{host}:{port}")
            if cfg.workers > 1:
                click.echo(
                    f"  {cfg.workers} workers share the public port; worker i takes agents "
                    "on the agent port + i",
                    err=True,
                )
        if started.admin_origin == "minted":  # a configured one is never shown
            click.echo(f"  admin token (shown once): {started.admin_token}", err=True)
        if ready_fd is not None:
            workers_cli.notify_ready(ready_fd)
        try:
            await stop.wait()
            click.echo(
                f"draining: no new sessions; live ones get {cfg.drain_grace:g}s to finish "
                "(signal again to stop at once)",
                err=True,
            )
            await gw.drain(cfg.drain_grace, cfg.drain_notice)
        finally:
            await gw.aclose()

    sys.exit(run(serve(), malloc=MANY_CONNECTIONS, on_first_signal=stop.set))


def _supervise(cfg: Any, options: tuple[str, ...]) -> int:
    """`--workers N` with N > 1: check the plan, then run the workers (cli/workers.py)."""
    import sqlalchemy as sa

    from gateway.config import parse_address

    if sa.make_url(cfg.store_url()).get_backend_name() != "postgresql":
        raise UsageProblem(
            f"{cfg.workers} workers need a PostgreSQL store, which they share as members of "
            "one fleet: set store (a postgresql:// URL) and secret_key in the config, or run "
            "one worker"
        )
    public, agent = parse_address(cfg.listen), parse_address(cfg.agent_listen)
    try:
        workers_cli.check_plan(cfg.workers, agent[1])
    except ValueError as exc:
        raise UsageProblem(str(exc)) from None
    set_log_format(cfg.log_format)
    root = click.get_current_context().find_root().params
    env = dict(os.environ, WARDGATE_LOG_LEVEL=str(root["log_level"]))
    if root.get("debug"):
        env["WARDGATE_DEBUG"] = "1"
    reserved = workers_cli.reserve(public)
    plan = workers_cli.Plan(
        count=cfg.workers,
        options=options,
        public=(public[0], reserved.getsockname()[1]),
        agent=agent,
    )
    return workers_cli.supervise(plan, reserved, env)


@main.command()
@click.option(
    "--data-dir", type=click.Path(path_type=Path), default=Path(".wardgate"), show_default=True
)
@click.option("--config", "config_path", type=click.Path(exists=True, path_type=Path))
@click.option("--listen", default="127.0.0.1:8443", show_default=True)
@click.option("--agent-listen", default="127.0.0.1:8444", show_default=True)
def dev(data_dir: Path, config_path: Path | None, listen: str, agent_listen: str) -> None:
    """Gateway + embedded agent + SQLite store in one process, for trying Wardgate out."""
    from agent.app import Agent
    from gateway.app import Gateway
    from gateway.config import load_config
    from shared.agentkey import parse as parse_key
    from shared.tasks import TaskOwner

    cfg = load_config(config_path, listen=listen, agent_listen=agent_listen, data_dir=data_dir)

    async def serve() -> None:
        # The dev admin token is kept in the data dir (0600) and reused while it is valid,
        # so shells that sourced the env file and ~/.pgpass entries survive a restart.
        gw = Gateway(cfg, admin_token_file=cfg.data_dir / "admin-token")
        started = await _start(gw)
        host, port = started.public_address
        url = f"https://{host}:{port}"
        key = await asyncio.to_thread(gw.agent_key, "default", "default")
        agent = Agent(
            parse_key(key), ca_pem=started.ca_path.read_bytes(), insecure=cfg.allow_insecure_agents
        )
        tasks = TaskOwner("dev")
        tasks.spawn(agent.run(), name="embedded-agent")
        env_file = cfg.data_dir / "env"
        token = started.admin_token or ""
        _write_env(env_file, url, token, started.ca_path.resolve())
        _announce(started, f"{host}:{port}")
        if started.admin_origin == "configured":
            click.echo("  admin token: the configured one (WARDGATE_ADMIN_TOKEN)", err=True)
        else:  # dev's own, minted or kept in the data dir
            click.echo(f"  admin token: {token}", err=True)
        click.echo("  embedded agent 'default' serves pool 'default'", err=True)
        click.echo(f"  use the CLI with: source {env_file} (signed in as admin)", err=True)
        try:
            await gw.wait_closed()
        finally:
            await tasks.aclose()
            await gw.aclose()

    sys.exit(run(serve(), malloc=MANY_CONNECTIONS))


def _cli_dir() -> Path | None:
    """The directory of the running `wardgate` executable (a venv's bin), absolute."""
    import shutil

    argv0 = Path(sys.argv[0])
    if argv0.name == "wardgate" and argv0.exists():
        return argv0.absolute().parent
    # `python -m cli.main`: the script installed next to this interpreter (not resolved:
    # a venv's python is a symlink out of the venv).
    beside = Path(sys.executable).absolute().parent / "wardgate"
    if beside.exists():
        return beside.parent
    found = shutil.which("wardgate")
    return Path(found).absolute().parent if found else None


def _write_env(env_file: Path, url: str, token: str, ca_path: Path) -> None:
    """The env file `source`d to use the CLI at once: gateway, token, CA, and `wardgate` on
    PATH. Mode 0600: it holds the admin token."""
    import shlex

    lines = [
        f"export WARDGATE_URL={shlex.quote(url)}",
        f"export WARDGATE_TOKEN={shlex.quote(token)}",
        f"export WARDGATE_CA={shlex.quote(str(ca_path))}",
    ]
    bin_dir = _cli_dir()
    if bin_dir is not None:
        lines.append(f'export PATH={shlex.quote(str(bin_dir))}:"$PATH"')
    fd = os.open(env_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    env_file.chmod(0o600)


# ---- agents ----------------------------------------------------------------------------


@main.group(invoke_without_command=True)
@click.option(
    "--key",
    envvar="WARDGATE_AGENT_KEY",
    help="wardgate://NAME:SECRET@HOST:PORT (or WARDGATE_AGENT_KEY).",
)
@click.option(
    "--ca",
    "ca_file",
    type=click.Path(exists=True, path_type=Path),
    help="Trust this CA for the gateway instead of the key's fingerprint pin.",
)
@click.option("--insecure", is_flag=True, help="Allow a plaintext connection to the gateway.")
@_log_format_option("text")
@click.pass_context
def agent(
    ctx: click.Context, key: str | None, ca_file: Path | None, insecure: bool, log_format: str
) -> None:
    """Run an agent (no subcommand), or manage agents."""
    if ctx.invoked_subcommand is not None:
        return
    set_log_format(log_format)
    from agent.app import Agent, AgentFatal
    from shared.agentkey import parse as parse_key

    if not key:
        raise click.UsageError("no agent key: pass --key or set WARDGATE_AGENT_KEY")
    try:
        parsed = parse_key(key)
    except ValueError as exc:
        raise click.UsageError(f"agent key: {exc}") from None
    ca_pem = ca_file.read_bytes() if ca_file else None

    async def serve() -> int:
        try:
            await Agent(parsed, ca_pem=ca_pem, insecure=insecure).run()
        except AgentFatal as exc:
            click.echo(f"wardgate agent: {exc}", err=True)
            return 2
        return 0

    sys.exit(run(serve(), malloc=BULK))


@agent.command("create")
@click.argument("name")
@click.option("--pool", help="Agent pool (default: the agent's name).")
@cl.gateway_options
def agent_create(
    name: str, pool: str | None, gateway: str | None, token: str | None, ca: str | None
) -> None:
    """Create an agent and print its key (shown once)."""
    with _ref(gateway, token, ca).http() as http:
        data = cl.check(http.post("/v1/agents", json={"name": name, "pool": pool}))
    click.echo(data["key"])
    click.echo(
        f"agent {data['name']} in pool {data['pool']}: keep this key secret; it is not shown again",
        err=True,
    )


AGENT_COLUMNS = [
    out.col("NAME", "name", ident=True),
    out.col("POOL", "pool"),
    out.Column(
        "STATE",
        lambda a: "revoked" if a["revoked"] else "connected" if a["connected"] else "offline",
    ),
    out.num("SESSIONS", "active_sessions"),
    out.col("VERSION", "version"),
    out.col("PEER", "peer"),
    out.col("CAPABILITIES", "capabilities"),
]


@agent.command("list")
@out.output_options
@cl.gateway_options
def agent_list(output: str | None, gateway: str | None, token: str | None, ca: str | None) -> None:
    """List agents and whether they are connected."""
    with _ref(gateway, token, ca).http() as http:
        data = cl.check(http.get("/v1/agents"))
    if not out.structured(data, output):
        out.table(data, AGENT_COLUMNS)


@agent.command("revoke")
@click.argument("name")
@cl.gateway_options
def agent_revoke(name: str, gateway: str | None, token: str | None, ca: str | None) -> None:
    """Revoke an agent's key; a connected agent is disconnected."""
    with _ref(gateway, token, ca).http() as http:
        cl.check(http.delete(f"/v1/agents/{name}"))
    click.echo(f"agent {name} revoked", err=True)


@agent.command("rotate")
@click.argument("name")
@cl.gateway_options
def agent_rotate(name: str, gateway: str | None, token: str | None, ca: str | None) -> None:
    """Give an agent a new key (printed once); the old key stops working."""
    with _ref(gateway, token, ca).http() as http:
        data = cl.check(http.post(f"/v1/agents/{name}/rotate"))
    click.echo(data["key"])


# ---- connections -----------------------------------------------------------------------


@main.group()
def connection() -> None:
    """Manage connections (what users connect to)."""


@connection.command("create")
@click.argument("name")
@click.option(
    "--type",
    "type_",
    default="tcp",
    show_default=True,
    type=click.Choice(SUPPORTED_TYPES),
    help="What the gateway serves: " + ", ".join(SUPPORTED_TYPES) + ".",
)
@click.option("--agent", "pool", default="default", show_default=True, help="Agent pool.")
@click.option("--host", required=True)
@click.option("--port", required=True, type=int)
@click.option("--database")
@click.option("--username")
@click.option("--password", help="env:NAME, file:PATH, or a literal (stored encrypted).")
@click.option("--private-key", help="ssh: the key the agent logs in with (env:, file:, literal).")
@click.option("--host-key", help="ssh: the target's host key (known_hosts line or SHA256:...).")
@click.option("--option", "options", multiple=True, help="KEY=VALUE, repeatable.")
@cl.gateway_options
def connection_create(
    name: str,
    type_: str,
    pool: str,
    host: str,
    port: int,
    database: str | None,
    username: str | None,
    password: str | None,
    private_key: str | None,
    host_key: str | None,
    options: tuple[str, ...],
    gateway: str | None,
    token: str | None,
    ca: str | None,
) -> None:
    """Create a connection."""
    body: dict[str, Any] = {"name": name, "type": type_, "agent": pool, "host": host, "port": port}
    for key, value in (
        ("database", database),
        ("username", username),
        ("password", password),
        ("private_key", private_key),
        ("host_key", host_key),
    ):
        if value is not None:
            body[key] = value
    if options:
        body["options"] = dict(o.split("=", 1) for o in options)
    with _ref(gateway, token, ca).http() as http:
        data = cl.check(http.post("/v1/connections", json=body))
    click.echo(f"connection {data['name']} created", err=True)


def _address(c: dict[str, Any]) -> str:
    # Only administrators see where a connection leads (`wardgate whoami`: your access).
    return f"{c['host']}:{c['port']}" if "host" in c else "(hidden)"


CONNECTION_COLUMNS = [
    out.col("NAME", "name", ident=True),
    out.col("TYPE", "type"),
    out.Column("ADDRESS", lambda c: _address(c)),
    out.col("AGENT", "agent"),
    out.when("UPDATED", "updated_at"),
]


@connection.command("list")
@out.output_options
@cl.gateway_options
def connection_list(
    output: str | None, gateway: str | None, token: str | None, ca: str | None
) -> None:
    """List connections."""
    with _ref(gateway, token, ca).http() as http:
        rows = cl.check(http.get("/v1/connections"))
    if not out.structured(rows, output):
        out.table(rows, CONNECTION_COLUMNS)


@connection.command("show")
@click.argument("name")
@out.output_options
@cl.gateway_options
def connection_show(
    name: str, output: str | None, gateway: str | None, token: str | None, ca: str | None
) -> None:
    """Show one connection (secrets as references, never values)."""
    with _ref(gateway, token, ca).http() as http:
        data = cl.check(http.get(f"/v1/connections/{name}"))
    if out.structured(data, output):
        return
    if "host" not in data:  # not an administrator: what you may do with it, no more
        access = data["access"] or "on request (wardgate request NAME)"
        out.record([("name", data["name"]), ("type", data["type"]), ("access", access)])
        return
    out.record(
        [
            ("name", data["name"]),
            ("type", data["type"]),
            ("address", _address(data)),
            ("agent pool", data["agent"]),
            ("options", data["options"]),
            ("secrets", data["secrets"]),
            ("created", out.timestamp(data["created_at"])),
            ("updated", out.timestamp(data["updated_at"])),
        ]
    )


@connection.command("delete")
@click.argument("name")
@cl.gateway_options
def connection_delete(name: str, gateway: str | None, token: str | None, ca: str | None) -> None:
    """Delete a connection."""
    with _ref(gateway, token, ca).http() as http:
        cl.check(http.delete(f"/v1/connections/{name}"))
    click.echo(f"connection {name} deleted", err=True)


@main.command("apply")
@click.option("-f", "--file", "path", required=True, type=click.Path(exists=True, path_type=Path))
@click.option(
    "--comment", help="Why the policy changes, shown by `policy history` (wins over the file's)."
)
@cl.gateway_options
def apply_cmd(
    path: Path, comment: str | None, gateway: str | None, token: str | None, ca: str | None
) -> None:
    """Apply a declarative YAML file (idempotent): `connections:` and/or `policy:`.

    A top-level `comment:` (or --comment) says why the policy changes; `wardgate policy
    history` shows it next to the new version. It is not part of the policy: applying the
    same policy with another comment changes nothing.
    """
    with path.open() as fh:  # a stream, so a YAML error's mark names the file
        doc = yaml.safe_load(fh) or {}
    if not isinstance(doc, dict):
        raise click.UsageError(f"{path}: expected a mapping with a 'connections:' list")
    unknown = set(doc) - {"connections", "policy", "comment"}
    if unknown:
        raise click.UsageError(f"{path}: unknown top-level keys: {', '.join(sorted(unknown))}")
    body: dict[str, Any] = {"connections": doc.get("connections", [])}
    if "policy" in doc:
        body["policy"] = doc["policy"] or {}
        note = comment if comment is not None else doc.get("comment")
        if note is not None:
            body["comment"] = str(note)
    elif comment is not None or "comment" in doc:
        raise click.UsageError(f"{path}: a comment goes with a 'policy:' to apply")
    with _ref(gateway, token, ca).http() as http:
        data = cl.check(http.post("/v1/apply", json=body))
    for r in data["connections"]:
        click.echo(f"connection {r['name']} {r['status']}")
    if "policy" in data:
        click.echo(f"policy version {data['policy']['version']} {data['policy']['status']}")


# ---- policy ----------------------------------------------------------------------------


@main.group()
def policy() -> None:
    """Guardrails: allow/deny rules on statements."""


@policy.command("explain")
@click.option("--user", required=True, help="The Wardgate user to judge for.")
@click.option(
    "--group", "groups", multiple=True, help="A group (repeatable; default: the user's own)."
)
@click.option("--connection", required=True, help="The connection the SQL would run on.")
@click.option("--sql", "sql_option", help="The statement (instead of the SQL argument).")
@click.argument("sql", required=False)
@out.output_options
@cl.gateway_options
def policy_explain(
    user: str,
    groups: tuple[str, ...],
    connection: str,
    sql_option: str | None,
    sql: str | None,
    output: str | None,
    gateway: str | None,
    token: str | None,
    ca: str | None,
) -> None:
    """Print the decision on SQL for a user on a connection, and the rules behind it.

    With column masking rules on a PostgreSQL connection, also the statement's lineage:
    which result columns derive from masked columns (and how), which clauses the gateway
    refuses because they would reveal masked values."""
    if (sql is None) == (sql_option is None):
        raise click.UsageError("give the statement once: as the SQL argument or with --sql")
    sql = sql if sql is not None else sql_option
    body: dict[str, Any] = {"user": user, "connection": connection, "sql": sql}
    if groups:
        body["groups"] = list(groups)
    with _ref(gateway, token, ca).http() as http:
        data = cl.check(http.post("/v1/policy/explain", json=body))
    if out.structured(data, output):
        return
    click.echo(f"decision: {data['decision']}")
    click.echo(f"reason: {data['reason']}")
    click.echo(f"rules: {', '.join(data['rules']) or '-'}")
    if data.get("review"):
        r = data["review"]
        who = [*(f"group {g}" for g in r["approvers"]["groups"]), *r["approvers"]["users"]]
        click.echo(f"review: {r['required']} of {', '.join(who)} within {r['timeout']}s")
    click.echo(
        f"identity: user={data['user']} groups={','.join(data['groups']) or '-'} "
        f"roles={','.join(data['roles']) or '-'}"
    )
    click.echo(
        f"connection: {data['connection']} access={data['access'] or 'none'} "
        f"guarded={'yes' if data['guarded'] else 'no'} "
        f"applicable rules={','.join(data['applicable_rules']) or '-'}"
    )
    for st in data["statements"]:
        rules = f" [{', '.join(st['rules'])}]" if st["rules"] else ""
        click.echo(f"  statement {st['index'] or '-'}: {st['effect']}{rules}  {st['facts']}")
        click.echo(f"    sql: {st['text']}")
        click.echo(f"    {st['reason']}")
    for m in data.get("masking", []):
        what = [f"{key} {','.join(m[key])}" for key in ("columns", "detectors", "regex") if m[key]]
        click.echo(f"masking: {m['name']} ({'; '.join(what)}) strategy={m['strategy']}")
    for b in data.get("budgets", []):
        limits = [
            f"{b[key]} {unit}/day"
            for key, unit in (("rows_per_day", "rows"), ("bytes_per_day", "bytes"))
            if b[key] is not None
        ]
        used = b.get("used")
        today = (
            f" used today: {used['rows']} rows, {used['bytes']} bytes"
            f"{' (exhausted)' if b['exhausted'] else ''}"
            if used
            else ""
        )
        click.echo(f"budget: {b['name']} {', '.join(limits)} on_exceed={b['on_exceed']}{today}")
    _echo_lineage(data.get("lineage"))


def _echo_lineage(lineage: dict[str, Any] | None) -> None:
    if lineage is None:
        return
    for c in lineage["columns"]:
        how = "derived" if c["derived"] else "direct"
        click.echo(f"lineage: column {c['name']} masked by {c['rule']} ({how}): {c['path']}")
    for r in lineage["refusals"]:
        click.echo(f"lineage: refused: {r['reason']}")
    if lineage["refusal"] and not lineage["refusals"]:
        click.echo(f"lineage: refused: {lineage['refusal']}")
    for w in lineage["writes"]:
        click.echo(f"lineage: write into {w['target']} copies {', '.join(w['sources'])}")
    for reason in lineage["unresolved"]:
        click.echo(f"lineage: not followed: {reason}")
    if not (lineage["columns"] or lineage["refusals"] or lineage["writes"]):
        click.echo("lineage: no result column or clause uses a masked column")


# ---- login, tcp ----------------------------------------------------------------------


@main.command()
@click.option("--gateway", help="Gateway URL, e.g. https://gw.example:8443 (or WARDGATE_URL).")
@click.option("--token", help="A Wardgate credential to store as it is (no IdP needed).")
@click.option("--ca", type=click.Path(exists=True, path_type=Path), help="CA to trust.")
@click.option("--device", is_flag=True, help="Sign in with the device flow (no local browser).")
@click.option(
    "--token-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Exchange this workload JWT (e.g. a CI job's OIDC token) for a machine credential.",
)
@click.option("--user", "local_user", help="Sign in as this local user (password + TOTP).")
@click.option("--no-browser", is_flag=True, help="Print the sign-in URL instead of opening it.")
@click.option(
    "--ssh-key",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also have this SSH key certified by the gateway's user CA (writes KEY-cert.pub).",
)
def login(
    gateway: str | None,
    token: str | None,
    ca: Path | None,
    device: bool,
    token_file: Path | None,
    local_user: str | None,
    no_browser: bool,
    ssh_key: Path | None,
) -> None:
    """Sign in and store the gateway credential (0600) for later commands.

    With an identity provider: the browser flow (authorization code + PKCE, loopback
    redirect), or --device. Machines: --token-file. Without an IdP: --user (local) or
    --token (store a credential as it is).
    """
    saved = cl.stored()
    url = (gateway or os.environ.get("WARDGATE_URL") or saved.get("url") or "").rstrip("/")
    if not url:
        raise click.UsageError("no gateway: pass --gateway URL or set WARDGATE_URL")
    cl.check_url(url)
    ca_file = str(ca) if ca else os.environ.get("WARDGATE_CA")
    if ca_file:
        ca_pem: bytes | None = cl.read_ca(ca_file)
    elif saved.get("ca_pem") and saved.get("url") == url:
        ca_pem = str(saved["ca_pem"]).encode()
    else:
        ca_pem = None
    if sum(bool(x) for x in (token, device, token_file, local_user)) > 1:
        raise click.UsageError("choose one of --token, --device, --token-file, --user")
    if token:
        # An API key signs in with a DPoP proof: a service account that requires DPoP binds
        # the key to this CLI's key now (the gateway checks, and binds nothing, for others).
        dpop = token.startswith(cl.API_KEY_PREFIX)
        ref = cl.GatewayRef(url, token, ca_pem, dpop=dpop)
        with ref.http() as http:
            who = cl.check(http.get("/v1/whoami"))
        bound = bool(dpop and (who.get("credential") or {}).get("dpop_jkt"))
        path = cl.save(ref.url, token, ref.ca_pem, dpop=True if bound else None)
        click.echo(f"logged in to {ref.url} as {who['user']} (saved in {path})", err=True)
        if ssh_key is not None:
            click.echo(ssh_cli.issue_cert(ref, ssh_key), err=True)
        return
    ref = cl.GatewayRef(url, None, ca_pem)
    if token_file:
        jwt_text = token_file.read_text().strip()
        with ref.http() as http:
            issued = cl.check(http.post("/v1/auth/workload", json={"token": jwt_text}))
    elif local_user:
        password = click.prompt("password", hide_input=True)
        code = click.prompt("one-time code")
        with ref.http() as http:
            issued = cl.check(
                http.post(
                    "/v1/auth/password",
                    json={"user": local_user, "password": password, "code": code},
                )
            )
    elif device:
        issued = cl.device_login(ref)
    else:
        issued = cl.oidc_login(ref, open_browser=not no_browser)
    path = cl.save_issued(ref.url, ca_pem, issued)
    groups = ", ".join(issued.get("groups") or []) or "none"
    click.echo(
        f"logged in to {ref.url} as {issued['user']} (groups: {groups}); credential valid "
        f"until {issued.get('expires_at')}, saved in {path}",
        err=True,
    )
    if ssh_key is not None:
        click.echo(
            ssh_cli.issue_cert(cl.GatewayRef(ref.url, issued["token"], ca_pem), ssh_key), err=True
        )


@main.command()
@cl.gateway_options
def logout(gateway: str | None, token: str | None, ca: str | None) -> None:
    """End your sign-in at the gateway and forget the stored credential."""
    saved = cl.stored()
    if saved.get("token"):
        ca_pem = str(saved["ca_pem"]).encode() if saved.get("ca_pem") else None
        ref = cl.GatewayRef(str(saved["url"]), str(saved["token"]), ca_pem)
        try:
            with ref.http() as http:
                http.post("/v1/auth/logout")
        except httpx.HTTPError as exc:
            click.echo(f"could not reach the gateway to end the sign-in: {exc}", err=True)
    forgot = cl.forget()
    click.echo("logged out" if forgot else "not logged in", err=True)


def _holds(grant: dict[str, Any]) -> str:
    """How a grant holds: always, or only through an approved access request."""
    if not grant.get("on_request"):
        return "granted"
    approved = grant.get("approved") or []
    if approved:
        return "; ".join(
            f"approved request for {a['connection']} until {out.relative(a['until'])}"
            for a in approved
        )
    name = grant["connection"]
    target = name if not any(c in name for c in "*?[ ") else "CONNECTION"
    return f"needs an approved request: wardgate request {target} --for 1h --reason ..."


GRANT_COLUMNS = [
    out.col("CONNECTION", "connection"),
    out.col("ACCESS", "access"),
    out.Column("HOLDS", _holds),
]


@main.command()
@out.output_options
@cl.gateway_options
def whoami(output: str | None, gateway: str | None, token: str | None, ca: str | None) -> None:
    """Who the gateway takes you for, your groups and what you may reach."""
    with _ref(gateway, token, ca).http() as http:
        data = cl.check(http.get("/v1/whoami"))
    if out.structured(data, output):
        return
    cred = data.get("credential") or {}
    expires = cred.get("expires_at")
    out.record(
        [
            ("user", f"{data['user']} ({data.get('kind', 'person')})"),
            ("admin", bool(data.get("admin"))),
            ("groups", data.get("groups")),
            ("credential", f"{cred.get('kind', '-')} {cred.get('id', '')}".strip()),
            ("expires", out.timestamp(expires) if expires else "never"),
        ]
    )
    out.section("grants", data.get("grants") or [], GRANT_COLUMNS)


@main.group()
def credentials() -> None:
    """Your sign-ins and API keys: list, refresh, revoke."""


def _credential_state(c: dict[str, Any]) -> str:
    state = "active" if c.get("active") else "inactive"
    return f"{state} (this one)" if c.get("current") else state


CREDENTIAL_COLUMNS = [
    out.col("ID", "id", ident=True),
    out.col("TYPE", "type"),
    out.col("USER", "user"),
    out.Column("HOW", lambda c: c.get("method") or c.get("label")),
    out.col("SCOPES", "scopes"),
    out.when("CREATED", "created_at"),
    out.Column("EXPIRES", lambda c: out.relative(c["expires_at"]) if c["expires_at"] else "never"),
    out.Column("STATE", _credential_state),
]


@credentials.command("list")
@click.option("--user", help="Another user's (administrators).")
@out.output_options
@cl.gateway_options
def credentials_list(
    user: str | None, output: str | None, gateway: str | None, token: str | None, ca: str | None
) -> None:
    """List sign-ins and long-lived credentials (never their secrets)."""
    params = {"user": user} if user else {}
    with _ref(gateway, token, ca).http() as http:
        data = cl.check(http.get("/v1/credentials", params=params))
    if not out.structured(data, output):
        out.table(data, CREDENTIAL_COLUMNS)


@credentials.command("revoke")
@click.argument("credential_id")
@cl.gateway_options
def credentials_revoke(
    credential_id: str, gateway: str | None, token: str | None, ca: str | None
) -> None:
    """Revoke a sign-in or API key by id; sessions opened with it end within seconds."""
    with _ref(gateway, token, ca).http() as http:
        data = cl.check(http.delete(f"/v1/credentials/{credential_id}"))
    click.echo(
        f"{data['type']} {data['id']} revoked; {data.get('sessions_ended', 0)} session(s) ended",
        err=True,
    )


@credentials.command("refresh")
def credentials_refresh() -> None:
    """Refresh the stored sign-in now (groups are re-read from the identity provider)."""
    saved = cl.stored()
    if not saved.get("refresh_token"):
        raise click.UsageError("no refreshable sign-in stored: run `wardgate login`")
    now = cl.refresh_stored(saved, force=True)
    click.echo(
        f"credential of {now.get('user')} refreshed, valid until {now.get('expires_at')}",
        err=True,
    )


@main.group()
def user() -> None:
    """Users (administrators): list, disable, enable, create local users."""


USER_COLUMNS = [
    out.col("NAME", "name", ident=True),
    out.col("KIND", "kind"),
    out.col("ADMIN", "admin"),
    out.col("GROUPS", "groups"),
    out.Column("STATE", lambda u: "disabled" if u["disabled"] else "enabled"),
    out.Column("SIGN-IN", lambda u: "local" if u.get("local") else u.get("issuer")),
]


@user.command("list")
@out.output_options
@cl.gateway_options
def user_list(output: str | None, gateway: str | None, token: str | None, ca: str | None) -> None:
    """List users with their kind, groups and state."""
    with _ref(gateway, token, ca).http() as http:
        data = cl.check(http.get("/v1/users"))
    if not out.structured(data, output):
        out.table(data, USER_COLUMNS)


@user.command("disable")
@click.argument("name")
@cl.gateway_options
def user_disable(name: str, gateway: str | None, token: str | None, ca: str | None) -> None:
    """Disable a user: every credential is revoked and live sessions end."""
    with _ref(gateway, token, ca).http() as http:
        cl.check(http.post(f"/v1/users/{name}/disable"))
    click.echo(f"user {name} disabled", err=True)


@user.command("enable")
@click.argument("name")
@cl.gateway_options
def user_enable(name: str, gateway: str | None, token: str | None, ca: str | None) -> None:
    """Enable a disabled user again (they sign in anew)."""
    with _ref(gateway, token, ca).http() as http:
        cl.check(http.post(f"/v1/users/{name}/enable"))
    click.echo(f"user {name} enabled", err=True)


def _long_enough(password: str) -> str:
    if len(password) < MIN_PASSWORD_LENGTH:
        # click re-prompts after a UsageError from value_proc, before the confirmation.
        raise click.UsageError(f"passwords have at least {MIN_PASSWORD_LENGTH} characters")
    return password


@user.command("create")
@click.argument("name")
@click.option("--group", "groups", multiple=True)
@cl.gateway_options
def user_create(
    name: str, groups: tuple[str, ...], gateway: str | None, token: str | None, ca: str | None
) -> None:
    """Create a local user (setups without an IdP); prints the TOTP URI once."""
    password = click.prompt(
        f"password (at least {MIN_PASSWORD_LENGTH} characters)",
        hide_input=True,
        confirmation_prompt=True,
        value_proc=_long_enough,
    )
    with _ref(gateway, token, ca).http() as http:
        data = cl.check(
            http.post(
                "/v1/users", json={"name": name, "password": password, "groups": list(groups)}
            )
        )
    click.echo(data["totp_uri"])
    click.echo("add this URI to an authenticator app; it is not shown again", err=True)


@main.group("service-account")
def service_account() -> None:
    """Service accounts (machines with API keys), for administrators."""


@service_account.command("create")
@click.argument("name")
@click.option("--group", "groups", multiple=True, help="Groups (roles map them), repeatable.")
@click.option(
    "--dpop",
    is_flag=True,
    help="Its API keys need DPoP proofs (RFC 9449): bound to the client's key at first use.",
)
@cl.gateway_options
def service_account_create(
    name: str,
    groups: tuple[str, ...],
    dpop: bool,
    gateway: str | None,
    token: str | None,
    ca: str | None,
) -> None:
    """Create (or update the groups of) a service account."""
    body = {"name": name, "groups": list(groups), "dpop": dpop}
    with _ref(gateway, token, ca).http() as http:
        cl.check(http.post("/v1/service-accounts", json=body))
    click.echo(f"service account {name} saved", err=True)


@service_account.command("key")
@click.argument("name")
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    required=True,
    help="Connection name or glob the key may reach (repeatable); 'admin' for the admin API.",
)
@click.option("--ttl", type=int, help="Lifetime in seconds (capped by the gateway).")
@click.option("--label", default="")
@cl.gateway_options
def service_account_key(
    name: str,
    scopes: tuple[str, ...],
    ttl: int | None,
    label: str,
    gateway: str | None,
    token: str | None,
    ca: str | None,
) -> None:
    """Issue an API key for a service account; printed once."""
    body = {"scopes": list(scopes), "ttl": ttl, "label": label}
    with _ref(gateway, token, ca).http() as http:
        data = cl.check(http.post(f"/v1/service-accounts/{name}/keys", json=body))
    click.echo(data["key"])
    click.echo(f"key {data['id']} expires {data['expires_at']}; it is not shown again", err=True)


def _libpq(ref: cl.GatewayRef, connection: str) -> tuple[dict[str, str], str]:
    """libpq parameters that reach CONNECTION through the gateway as the current user, and
    the password: a fresh short-lived credential valid for this one connection."""
    from urllib.parse import urlsplit

    if not ref.token:
        raise click.UsageError("no credential: pass --token, set WARDGATE_TOKEN, or log in")
    with ref.http() as http:
        minted = cl.check(http.post("/v1/credentials/connection", json={"connection": connection}))
    url = urlsplit(ref.url)
    params = libpq_params(
        url.hostname or "localhost",
        url.port or 443,
        connection,
        minted["user"],
        str(cl.ca_file(ref.ca_pem)) if ref.ca_pem else "system",
    )
    return params, str(minted["token"])


_conninfo = conninfo  # shared with the console's connections page


@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("connection")
@click.argument("psql_args", nargs=-1, type=click.UNPROCESSED)
@cl.gateway_options
def psql(
    connection: str,
    psql_args: tuple[str, ...],
    gateway: str | None,
    token: str | None,
    ca: str | None,
) -> None:
    """Run psql on CONNECTION through the gateway with your credential."""
    ref = _ref(gateway, token, ca)
    params, password = _libpq(ref, connection)
    env = dict(os.environ, PGPASSWORD=password)
    os.execvpe("psql", ["psql", _conninfo(params), *psql_args], env)  # noqa: S606 - exec psql itself


@main.command()
@click.argument("connection")
@click.option(
    "--pgpass",
    is_flag=True,
    help="Write the credential to ~/.pgpass instead of putting it in the string.",
)
@cl.gateway_options
def creds(
    connection: str, pgpass: bool, gateway: str | None, token: str | None, ca: str | None
) -> None:
    """Print a libpq connection string for CONNECTION (psycopg, DBeaver, pgAdmin...).

    The password in it is a short-lived credential for this connection only."""
    ref = _ref(gateway, token, ca)
    params, password = _libpq(ref, connection)
    if pgpass:
        path = cl.write_pgpass(params, password)
        click.echo(f"credential written to {path}", err=True)
    else:
        params["password"] = password
    click.echo(_conninfo(params))


@main.command()
@click.argument("name")
@click.option(
    "--listen",
    default="127.0.0.1:0",
    show_default=True,
    help="Local HOST:PORT to accept connections on.",
)
@cl.gateway_options
def tcp(name: str, listen: str, gateway: str | None, token: str | None, ca: str | None) -> None:
    """Open a local port whose connections reach connection NAME through the gateway."""
    from cli.tcp import forward
    from gateway.config import parse_address

    try:
        host, port = parse_address(listen)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--listen") from None
    ref = _ref(gateway, token, ca)
    if not ref.token:
        raise click.UsageError("no credential: pass --token, set WARDGATE_TOKEN, or log in")
    # Refuse before listening what every client connection would be refused (a missing
    # connection, another type, no access), rather than fail at the first client.
    with ref.http() as http:
        access = cl.check(http.get(f"/v1/connections/{quote(name, safe='')}/access"))
    if access["type"] != "tcp":
        raise click.ClickException(
            f"connection {name!r} is of type {access['type']}; wardgate tcp reaches only tcp "
            "connections"
        )
    if access["access"] is None:
        raise click.ClickException(f"you may not use connection {name!r}: {access['reason']}")
    sys.exit(run(forward(ref, name, host, port)))


activity.register(main)  # sessions list/show/replay, audit list/verify
reviews_cli.register(main)  # approvals: reviews, request, service-account owner
policy_commands.register(main, policy)  # policy show/history/rollback, budgets usage

main.add_command(ssh_cli.ssh)  # wardgate ssh CONNECTION
main.add_command(ssh_cli.ssh_keys)  # wardgate ssh-keys add|list|remove
main.add_command(ssh_cli.ssh_cert)  # wardgate ssh-cert [--key FILE]
main.add_command(kube_commands)
main.add_command(members_cli.members)  # wardgate members list


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
