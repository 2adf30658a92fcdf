"""Where the CLI finds the gateway and the user's credential.

Order: `--gateway`/`--token`/`--ca` flags, then WARDGATE_URL / WARDGATE_TOKEN / WARDGATE_CA,
then what `wardgate login` stored in $WARDGATE_CONFIG_DIR (default ~/.config/wardgate).
"""

from __future__ import annotations

import json
import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import httpx

from shared.tlsutil import client_context


def config_dir() -> Path:
    base = os.environ.get("WARDGATE_CONFIG_DIR")
    if base:
        return Path(base)
    xdg = os.environ.get("XDG_CONFIG_HOME")
    return (Path(xdg) if xdg else Path.home() / ".config") / "wardgate"


def credentials_path() -> Path:
    return config_dir() / "credentials.json"


@dataclass(frozen=True)
class GatewayRef:
    url: str
    token: str | None
    ca_pem: bytes | None

    def ssl_context(self, alpn: tuple[str, ...] = ()) -> ssl.SSLContext:
        return client_context(self.ca_pem, alpn)

    def http(self) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        return httpx.Client(
            base_url=self.url, headers=headers, verify=self.ssl_context(), timeout=30
        )


def stored() -> dict[str, Any]:
    path = credentials_path()
    if not path.exists():
        return {}
    data = json.loads(path.read_text())
    return data if isinstance(data, dict) else {}


def save(url: str, token: str, ca_pem: bytes | None) -> Path:
    path = credentials_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"url": url, "token": token, "ca_pem": ca_pem.decode() if ca_pem else None}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(payload, fh)
    return path


def resolve(gateway: str | None, token: str | None, ca: str | None) -> GatewayRef:
    saved = stored()
    url = gateway or os.environ.get("WARDGATE_URL") or saved.get("url")
    if not url:
        raise click.UsageError(
            "no gateway: pass --gateway URL, set WARDGATE_URL, or run `wardgate login`"
        )
    tok = token or os.environ.get("WARDGATE_TOKEN") or saved.get("token")
    ca_file = ca or os.environ.get("WARDGATE_CA")
    ca_pem: bytes | None
    if ca_file:
        ca_pem = Path(ca_file).read_bytes()
    elif saved.get("ca_pem") and saved.get("url") == url:
        ca_pem = str(saved["ca_pem"]).encode()
    else:
        ca_pem = None
    return GatewayRef(url.rstrip("/"), tok, ca_pem)


def check(response: httpx.Response) -> Any:
    if response.is_success:
        return response.json()
    try:
        detail = response.json().get("detail", response.text)
    except ValueError:
        detail = response.text
    if isinstance(detail, list):  # pydantic validation errors
        detail = "; ".join(
            f"{'.'.join(str(p) for p in d.get('loc', [])[1:])}: {d.get('msg')}" for d in detail
        )
    raise click.ClickException(f"gateway answered {response.status_code}: {detail}")


def ca_file(ca_pem: bytes) -> Path:
    """The CA as a file for programs that want a path (psql's sslrootcert)."""
    import hashlib

    path = config_dir() / f"ca-{hashlib.sha256(ca_pem).hexdigest()[:16]}.pem"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(ca_pem)
    return path


def write_pgpass(params: dict[str, str], password: str) -> Path:
    """Add or replace the ~/.pgpass line for these host/port/dbname/user (mode 0600)."""
    path = Path(os.environ.get("PGPASSFILE", Path.home() / ".pgpass"))

    def esc(v: str) -> str:
        return v.replace("\\", "\\\\").replace(":", "\\:")

    key = ":".join(esc(params[k]) for k in ("host", "port", "dbname", "user"))
    lines = path.read_text().splitlines() if path.exists() else []
    lines = [line for line in lines if not line.startswith(key + ":")]
    lines.append(f"{key}:{esc(password)}")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    return path
