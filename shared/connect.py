"""How a client reaches a connection through the gateway: libpq parameters, the SSH login
name, and the command lines a person types. One place, used by the CLI (`wardgate psql`,
`wardgate creds`) and the console's connections page, so both show the same commands.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping


def libpq_params(
    host: str, port: int, connection: str, user: str, sslrootcert: str = "system"
) -> dict[str, str]:
    """libpq parameters that reach `connection` through the gateway at host:port. The
    password (a per-connection credential) is not among them."""
    return {
        "host": host,
        "port": str(port),
        "dbname": connection,
        "user": user,
        "sslmode": "verify-full",
        # libpq >= 16 understands "system"; older ones need the CA file.
        "sslrootcert": sslrootcert,
    }


def conninfo(params: Mapping[str, str]) -> str:
    """A libpq connection string (key=value pairs, quoted where libpq needs it)."""

    def quote(value: str) -> str:
        if value and not any(c in value for c in " '\\"):
            return value
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"

    return " ".join(f"{k}={quote(v)}" for k, v in params.items())


def ssh_login(user: str, connection: str) -> str:
    """The SSH login name that names the target (gateway/protocols/ssh.py)."""
    return f"{user}:{connection}"


def commands(
    kind: str,
    *,
    host: str,
    port: int,
    connection: str,
    user: str,
    sslrootcert: str = "system",
) -> list[str]:
    """Shell command lines that reach `connection` (of type `kind`) as `user`: first the
    plain client's, then the CLI's, which mints the short-lived credential itself."""
    name = shlex.quote(connection)
    if kind == "postgres":
        info = conninfo(libpq_params(host, port, connection, user, sslrootcert))
        quoted = f'"{info}"' if not any(c in info for c in '"$`\\!') else shlex.quote(info)
        return [f"psql {quoted}", f"wardgate psql {name}"]
    if kind == "ssh":
        login = shlex.quote(f"{ssh_login(user, connection)}@{host}")
        return [f"ssh -p {port} {login}", f"wardgate ssh {name}"]
    if kind == "kubernetes":
        return [f"wardgate kube login {name}"]
    if kind == "tcp":
        return [f"wardgate tcp {name} --listen 127.0.0.1:0"]
    return []
