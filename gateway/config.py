"""Gateway configuration: one YAML file, validated by pydantic.

Every field has a default that works for `wardgate dev`; production overrides the
addresses, the store URL, the TLS material and the secret key. Values that are secrets
(`secret_key`, `admin_token`) may be written as `env:NAME` or `file:PATH` so the file
itself can be committed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from gateway.connspec import ConnectionSpec

DEFAULT_LISTEN = "0.0.0.0:8443"
DEFAULT_AGENT_LISTEN = "0.0.0.0:8444"


class TLSConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cert: Path | None = None  # full chain PEM
    key: Path | None = None
    ca: Path | None = None  # the CA agents and clients pin; defaults to the chain's last cert
    hostnames: list[str] = Field(default_factory=list)  # extra SANs for a generated cert


class AgentDecl(BaseModel):
    """An agent declared in config; its key is printed once when first created."""

    model_config = ConfigDict(extra="forbid")
    name: str
    pool: str | None = None


class GatewayConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    listen: str = DEFAULT_LISTEN
    agent_listen: str = DEFAULT_AGENT_LISTEN
    data_dir: Path = Path(".wardgate")
    store: str | None = None  # SQLAlchemy URL; default sqlite in data_dir
    tls: TLSConfig = Field(default_factory=TLSConfig)
    # Plaintext agent connections; the agent must also pass --insecure.
    allow_insecure_agents: bool = False
    # 32-byte key (base64) for AES-GCM sealing of connection secrets at rest.
    secret_key: str | None = None
    admin_token: str | None = None
    ping_interval: float = Field(default=10.0, gt=0)
    open_timeout: float = Field(default=15.0, gt=0)
    connections: list[ConnectionSpec] = Field(default_factory=list)
    agents: list[AgentDecl] = Field(default_factory=list)

    @field_validator("listen", "agent_listen")
    @classmethod
    def _address(cls, value: str) -> str:
        parse_address(value)
        return value

    def store_url(self) -> str:
        if self.store:
            return resolve_secret(self.store)
        return f"sqlite:///{(self.data_dir / 'wardgate.db').resolve()}"


def parse_address(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"address {value!r} is not HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


def resolve_secret(value: str) -> str:
    """Resolve `env:NAME` / `file:PATH` references in the gateway's own settings."""
    if value.startswith("env:"):
        name = value[4:]
        if name not in os.environ:
            raise ValueError(f"environment variable {name} is not set")
        return os.environ[name]
    if value.startswith("file:"):
        return Path(value[5:]).read_text().strip()
    return value


def load_config(path: Path | None, **overrides: Any) -> GatewayConfig:
    data: dict[str, Any] = {}
    if path is not None:
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: expected a mapping at the top level")
        data.update(loaded)
    data.update({k: v for k, v in overrides.items() if v is not None})
    return GatewayConfig.model_validate(data)
