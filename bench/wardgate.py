"""Wardgate as it is deployed: gateway and agent as separate processes, TLS on, audit on.

The gateway generates its CA and certificate in its data directory and keeps its store (and
so the audit log every statement is written to before it is forwarded) in SQLite there. The
agent is created through the admin API, started with its key, and the benchmark connection
(``bench``, type postgres) carries the database role's password as a literal, sealed by the
gateway's ``secret_key``. Clients log in as ``admin`` with the admin token as password,
``sslmode=verify-full`` against the generated CA.

The gateway runs with a realistic policy (``POLICY``, in the config, so it becomes policy
version 1): the connection is guarded (what no rule allows is denied), guardrails deny DDL,
privilege changes, anything reaching outside the data and where-less writes, allow rules name
exactly what the workloads read, an exfiltration budget counts every row and byte (limits far
above what a run reads), and a masking rule puts the agent's result rewriter on the path of
every result. The masking rule is a custom pattern, not a column rule: COPY TO STDOUT is
refused when a column rule applies (its rows name no columns), and the bulk workload is COPY.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import ssl
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from bench.postgres import Postgres
from bench.procs import BenchError, Proc, free_port, running, wait_for
from bench.routes import WARDGATE as WARDGATE_ROUTE
from bench.routes import Route
from gateway.crypto import SecretBox, new_token

CONNECTION = "bench"
AGENT = "default"
USER = "admin"

# What pgbench -S (and its start-up catalog query), pgbench -C with `SELECT 1`, psql's COPY
# and the psycopg round trips read; tests/bench/test_policy.py checks each is allowed.
POLICY: dict[str, Any] = {
    "guarded_connections": [CONNECTION],
    "rules": [
        {
            "name": "no-schema-or-privilege-changes",
            "effect": "deny",
            "message": "schema and privilege changes go through migrations",
            "match": {"kinds": ["ddl", "dcl"]},
        },
        {
            "name": "no-outside-data",
            "effect": "deny",
            "message": "no access outside the data (files, programs, remote servers, roles)",
            "match": {"flags": ["outside_data"]},
        },
        {
            "name": "no-where-less-writes",
            "effect": "deny",
            "message": "UPDATE and DELETE need a WHERE clause",
            "match": {"flags": ["where_less_write"]},
        },
        {
            "name": "bench-reads",
            "effect": "allow",
            "match": {
                "connections": [CONNECTION],
                "kinds": ["read"],
                # Not `pg_catalog.*`: an unqualified table would match its `*` (any schema).
                "tables": [
                    "pgbench_*",
                    "pg_catalog.pg_class",
                    "pg_catalog.pg_namespace",
                    "pg_catalog.pg_partitioned_table",
                    "pg_catalog.pg_inherits",
                ],
                "functions": [
                    "count",
                    "repeat",
                    "generate_series",
                    "array_position",
                    "current_schemas",
                ],
            },
        },
        {
            "name": "bench-transactions",
            "effect": "allow",
            "match": {"connections": [CONNECTION], "kinds": ["transaction"]},
        },
    ],
    "budgets": [
        {
            "name": "bench-daily",
            "match": {"connections": [CONNECTION]},
            "rows_per_day": 10**12,
            "bytes_per_day": 10**15,
        }
    ],
    "masking": [
        {
            "name": "employee-ids",
            "match": {"connections": [CONNECTION]},
            "regex": [r"EMP-\d{6}"],
            "strategy": "redact",
        }
    ],
}


def _command() -> list[str]:
    """The installed `wardgate` command, as deployed (`python -m cli.main` if not installed)."""
    script = Path(sys.executable).with_name("wardgate")
    return [sys.executable, str(script)] if script.is_file() else [sys.executable, "-m", "cli.main"]


WARDGATE = _command()


@dataclass(frozen=True, slots=True)
class WardgateStack:
    """A running gateway and agent, and what a PostgreSQL client needs to use them."""

    public_port: int
    ca_path: Path
    token: str
    gateway: Proc
    agent: Proc
    config: Path  # the gateway's configuration, which another member of its fleet starts from

    def route(self) -> Route:
        """The benchmark's PostgreSQL route through this gateway (TLS, verified)."""
        return Route(
            WARDGATE_ROUTE,
            "127.0.0.1",
            self.public_port,
            USER,
            self.token,
            CONNECTION,
            {"sslmode": "verify-full", "sslrootcert": str(self.ca_path)},
            {"gateway": self.gateway, "agent": self.agent},
        )


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WARDGATE_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


class _Api:
    def __init__(self, port: int, ca_path: Path, token: str) -> None:
        self.port = port
        self.ca_path = ca_path
        self.token = token

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=f"https://127.0.0.1:{self.port}",
            headers={"Authorization": f"Bearer {self.token}"},
            verify=ssl.create_default_context(cafile=str(self.ca_path)),
            timeout=30,
        )

    def call(self, method: str, path: str, json: Any = None) -> Any:
        with self.client() as client:
            response = client.request(method, path, json=json)
        if response.status_code >= 400:
            raise BenchError(f"{method} {path}: {response.status_code} {response.text}")
        return response.json()


def _free_ports(count: int) -> int:
    """A port P with P .. P + count - 1 free (`--workers`: worker i takes agents on P + i)."""
    for _ in range(100):
        port = free_port()
        try:
            for taken in range(1, count):
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", port + taken))
        except OSError:
            continue
        return port
    raise BenchError(f"found no {count} consecutive free ports")


def _agent_on(agent: Proc, port: int) -> Callable[[], bool]:
    line = f"connected to 127.0.0.1:{port} "
    return lambda: line in agent.log_path.read_text(errors="replace")


@contextlib.contextmanager
def wardgate(
    root: Path,
    pg: Postgres,
    *,
    store: str | None = None,
    workers: int = 1,
    policy: dict[str, Any] | None = None,
) -> Iterator[WardgateStack]:
    """Start gateway and agent in ``root`` (created), with a connection to ``pg``; stop both.
    ``policy``: instead of POLICY; ``store``: a PostgreSQL store's URL instead of SQLite in the
    data directory; ``workers``:
    `wardgate gateway --workers` (needs ``store``); the agent is connected to each."""
    root.mkdir()
    data_dir = root / "gateway"
    data_dir.mkdir()
    token = new_token()
    public, agent_port = free_port(), _free_ports(workers)
    settings: dict[str, Any] = {
        "listen": f"127.0.0.1:{public}",
        "agent_listen": f"127.0.0.1:{agent_port}",
        "data_dir": str(data_dir),
        "secret_key": SecretBox.generate_key(),
        "policy": POLICY if policy is None else policy,
    }
    if store is not None:
        settings["store"] = store
    if workers > 1:
        settings["workers"] = workers
    config = root / "gateway.yaml"
    config.write_text(yaml.safe_dump(settings))
    ca_path = data_dir / "tls" / "ca.pem"
    api = _Api(public, ca_path, token)
    with contextlib.ExitStack() as stack:
        gateway = stack.enter_context(
            running(
                Proc(
                    "gateway",
                    [*WARDGATE, "gateway", "--config", str(config)],
                    root / "gateway.log",
                    _env(WARDGATE_ADMIN_TOKEN=token),
                )
            )
        )

        def healthy() -> bool:
            gateway.check_alive()
            return ca_path.exists() and api.call("GET", "/v1/health")["status"] == "ok"

        wait_for(healthy, "the gateway to answer /v1/health", timeout=60)
        key = str(api.call("POST", "/v1/agents", {"name": AGENT})["key"])
        agent = stack.enter_context(
            running(
                Proc(
                    "agent", [*WARDGATE, "agent"], root / "agent.log", _env(WARDGATE_AGENT_KEY=key)
                )
            )
        )

        def connected() -> bool:
            agent.check_alive()
            agents = {a["name"]: a for a in api.call("GET", "/v1/agents")}
            return bool(agents.get(AGENT, {}).get("connected"))

        wait_for(connected, "the agent to connect", timeout=60)
        for port in range(agent_port, agent_port + workers):
            # Each worker answers /v1/agents for itself: the agent's log names each port.
            wait_for(
                _agent_on(agent, port),
                f"the agent to connect to the worker on agent port {port}",
                timeout=60,
            )
        api.call(
            "POST",
            "/v1/connections",
            {
                "name": CONNECTION,
                "type": "postgres",
                "agent": AGENT,
                "host": pg.host,
                "port": pg.port,
                "database": pg.database,
                "username": pg.role,
                "password": pg.password,
            },
        )
        yield WardgateStack(public, ca_path, token, gateway, agent, config)


@contextlib.contextmanager
def member(stack: WardgateStack, root: Path, **fleet: Any) -> Iterator[WardgateStack]:
    """Another member of `stack`'s fleet (its PostgreSQL store, secret key, policy and TLS
    identity) in ``root``, started with `fleet` settings (e.g. ``advertise``); stopped after."""
    root.mkdir()
    data_dir = root / "gateway"
    shutil.copytree(stack.config.parent / "gateway" / "tls", data_dir / "tls")
    settings = yaml.safe_load(stack.config.read_text())
    if not str(settings.get("store", "")).startswith("postgresql"):
        raise BenchError("another member needs the first one's PostgreSQL store")
    public = free_port()
    settings.update(
        listen=f"127.0.0.1:{public}",
        agent_listen=f"127.0.0.1:{free_port()}",
        data_dir=str(data_dir),
        fleet=fleet,
    )
    config = root / "gateway.yaml"
    config.write_text(yaml.safe_dump(settings))
    api = _Api(public, stack.ca_path, stack.token)
    proc = Proc(
        "gateway",
        [*WARDGATE, "gateway", "--config", str(config)],
        root / "gateway.log",
        _env(WARDGATE_ADMIN_TOKEN=stack.token),
    )
    with running(proc) as gateway:

        def answers() -> bool:
            gateway.check_alive()
            with api.client() as client:
                return client.get("/v1/health").status_code == 200

        wait_for(answers, "the second member to answer /v1/health", timeout=60)
        yield WardgateStack(public, stack.ca_path, stack.token, gateway, stack.agent, config)
