"""The declarative connection format shared by `wardgate apply`, the gateway config's
`connections:` list and the admin API.

    - name: pg-main
      type: postgres
      agent: default            # the agent pool that reaches the target
      host: 10.0.0.5
      port: 5432
      database: app
      username: app_rw
      password: env:APP_DB_PASSWORD   # or file:/path, or an enc:v1:... sealed value

SSH connections (`type: ssh`) log in as `username` with `private_key` (an unencrypted
OpenSSH/PEM key) or `password`, and pin the target's host key in `host_key` (a known_hosts
or .pub line, or an OpenSSH `SHA256:` fingerprint; several on separate lines):

    - name: web-1
      type: ssh
      host: 10.0.0.9
      port: 22
      username: deploy
      private_key: file:/run/secrets/web-1.key
      host_key: "SHA256:Xb3..."
      options: {ssh_forwarding: ops}

Secret-bearing fields (`password`, everything under `secrets:`) hold references or sealed
blobs once stored; a plain value is sealed with the gateway's key on the way in.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gateway.conntypes import SUPPORTED_TYPES, ConnectionType
from gateway.policy import ssh as ssh_policy

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
DEFAULT_POOL = "default"

# Fields that become plain options on the record (visible in `connection show`).
OPTION_FIELDS = ("database", "username", "sslmode", "host_key")


class ConnectionSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str  # what users type: lowercase letters, digits, . _ -
    type: ConnectionType = "tcp"  # the protocol, which decides the front door
    agent: str = DEFAULT_POOL  # the agent pool that reaches the target
    host: str  # the target, as the agent sees it
    port: int = Field(ge=1, le=65535)
    database: str | None = None  # postgres: the database on the target
    username: str | None = None  # the account the agent logs in as
    sslmode: str | None = None  # postgres: the agent's TLS to the target (libpq's modes)
    password: str | None = None  # env:NAME / file:PATH (read by the agent) / sealed literal
    private_key: str | None = None  # ssh: the key the agent logs in with (a secret)
    host_key: str | None = None  # ssh: the target's host key pin
    options: dict[str, str] = Field(default_factory=dict)  # per-protocol, see its guide
    secrets: dict[str, str] = Field(default_factory=dict)  # more secrets by name (token)

    @field_validator("type", mode="before")
    @classmethod
    def _served(cls, value: Any) -> Any:
        if value not in SUPPORTED_TYPES:
            raise ValueError(
                f"type {value!r} is not served by Wardgate; supported types: "
                f"{', '.join(SUPPORTED_TYPES)}"
            )
        return value

    @field_validator("name", "agent")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME_RE.match(value):
            raise ValueError(
                f"{value!r}: use lowercase letters, digits, '.', '_' or '-' (max 63 chars)"
            )
        return value

    @model_validator(mode="after")
    def _ssh(self) -> ConnectionSpec:
        if self.type != "ssh":
            if self.private_key is not None or self.host_key is not None:
                raise ValueError("private_key and host_key are for ssh connections")
            return self
        if not self.username:
            raise ValueError("an ssh connection needs a username")
        if not (self.host_key or self.options.get("host_key")):
            raise ValueError(
                "an ssh connection needs host_key: the target's known_hosts line or its "
                "SHA256 fingerprint (ssh-keygen -lf KEY.pub)"
            )
        ssh_policy.validate_options(self.options)  # ValueError: review terms unreadable
        secrets = self.secret_map()
        if "private_key" not in secrets and "password" not in secrets:
            raise ValueError("an ssh connection needs private_key or password")
        return self

    def option_map(self) -> dict[str, str]:
        options = dict(self.options)
        for key in OPTION_FIELDS:
            value = getattr(self, key)
            if value is not None:
                options[key] = value
        return options

    def secret_map(self) -> dict[str, str]:
        secrets = dict(self.secrets)
        if self.password is not None:
            secrets["password"] = self.password
        if self.private_key is not None:
            secrets["private_key"] = self.private_key
        return secrets
