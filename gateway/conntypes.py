"""The connection types the gateway serves. Each has a front door (gateway/protocols/) and an
agent side (agent/protocols/); a type nothing serves is refused, naming these. Kept free of
imports: the CLI reads it at every start for `connection create --type`."""

from __future__ import annotations

from typing import Literal, get_args

ConnectionType = Literal["tcp", "postgres", "ssh", "kubernetes"]
SUPPORTED_TYPES: tuple[str, ...] = get_args(ConnectionType)
