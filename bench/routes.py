"""A route is one way for a client to reach the benchmark database.

It says where libpq connects (host, port, login, TLS settings) and which processes relay the
bytes (none for ``direct``; ``ssh`` and the ``sshd`` processes for ``ssh_tunnel``; gateway and
agent for ``wardgate``), whose CPU time and memory the relay measurements read.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

import psutil
from psycopg.conninfo import make_conninfo

from bench.procs import Proc

DIRECT = "direct"
SSH_TUNNEL = "ssh_tunnel"
WARDGATE = "wardgate"
ROUTES = (DIRECT, SSH_TUNNEL, WARDGATE)
LABELS: Mapping[str, str] = {DIRECT: "direct", SSH_TUNNEL: "ssh -L", WARDGATE: "Wardgate"}


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    host: str
    port: int
    user: str
    password: str
    dbname: str
    tls: Mapping[str, str]  # sslmode and, for Wardgate, sslrootcert
    relays: Mapping[str, Proc] = field(default_factory=dict)  # part name -> process

    def conninfo(self) -> str:
        return make_conninfo(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            dbname=self.dbname,
            **self.tls,
        )

    def libpq_env(self) -> dict[str, str]:
        """The environment for pgbench and psql: the route via PG* variables."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(
            PGHOST=self.host,
            PGPORT=str(self.port),
            PGUSER=self.user,
            PGPASSWORD=self.password,
            PGDATABASE=self.dbname,
        )
        env.update({f"PG{key.upper()}": value for key, value in self.tls.items()})
        return env

    def relay_report(self, lines: int = 15) -> str:
        """Whether each relay still runs, with the tail of its log: attached to failures."""
        out = []
        for part, proc in self.relays.items():
            state = "running" if proc.alive() else "EXITED"
            out.append(f"--- {part} ({state}), {proc.log_path}:\n{proc.log_tail(lines)}")
        return "\n".join(out)

    def relay_processes(self) -> dict[str, list[psutil.Process]]:
        """Each relaying part with its descendants (sshd forks per connection), right now."""
        for proc in self.relays.values():
            proc.check_alive()
        return {part: proc.processes() for part, proc in self.relays.items()}
