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

Secret-bearing fields (`password`, everything under `secrets:`) hold references or sealed
blobs once stored; a plain value is sealed with the gateway's key on the way in.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

ConnectionType = Literal["tcp", "postgres", "mysql", "ssh", "kubernetes"]
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
DEFAULT_POOL = "default"

# Fields that become plain options on the record (visible in `connection show`).
OPTION_FIELDS = ("database", "username", "sslmode")


class ConnectionSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    type: ConnectionType = "tcp"
    agent: str = DEFAULT_POOL
    host: str
    port: int = Field(ge=1, le=65535)
    database: str | None = None
    username: str | None = None
    sslmode: str | None = None
    password: str | None = None
    options: dict[str, str] = Field(default_factory=dict)
    secrets: dict[str, str] = Field(default_factory=dict)

    @field_validator("name", "agent")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME_RE.match(value):
            raise ValueError(
                f"{value!r}: use lowercase letters, digits, '.', '_' or '-' (max 63 chars)"
            )
        return value

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
        return secrets
