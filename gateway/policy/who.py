"""Who a rule is for: the identity and connection conditions every kind of rule shares.

Guardrails, masking rules, exfiltration budgets and Kubernetes rules all start with the same
conditions, with the same meaning: `users` (globs), `groups` (any), `roles` (Wardgate roles,
any), `identity` (`person` or `machine`), `connections` (globs). Every given condition must
hold; an absent one matches everyone.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


@dataclass(frozen=True, slots=True)
class Subject:
    """Who is asking: the identity facts rules can name."""

    user: str
    groups: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()
    machine: bool = False


def glob(value: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(value, p) for p in patterns)


class WhoMatch(BaseModel):
    """The identity and connection conditions of a rule."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    users: list[str] = Field(default_factory=list)  # user names (shell globs)
    groups: list[str] = Field(default_factory=list)  # the user's groups
    roles: list[str] = Field(default_factory=list)  # Wardgate roles the user holds
    identity: Literal["person", "machine"] | None = None  # people or machines only
    connections: list[str] = Field(default_factory=list)  # connection names (shell globs)

    def applies(self, subject: Subject, connection: str) -> bool:
        if self.users and not glob(subject.user, self.users):
            return False
        if self.groups and not set(self.groups) & set(subject.groups):
            return False
        if self.roles and not set(self.roles) & set(subject.roles):
            return False
        if self.identity is not None and (self.identity == "machine") != subject.machine:
            return False
        return not (self.connections and not glob(connection, self.connections))
