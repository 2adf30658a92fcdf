"""Roles grant connections at an access level; the broker asks here at every session open.

A role applies to an identity when the identity's user name is in the role's `users` or one
of its groups is in the role's `groups` (groups come from the IdP at sign-in and refresh,
from a service account's definition, or from a workload trust entry). A role grants
connection-name patterns (shell globs, `pg-*`) at `read-only`, `read-write` or `admin`;
the highest level any applicable role grants wins. A role with `admin: true` makes its
members gateway administrators (admin API, every connection at `admin`).

A grant with `request:` terms holds only *on request*: it applies while the identity has an
approved, unexpired access request for that connection (`wardgate request CONNECTION --for
2h`, reviewed by others under those terms, see `gateway.reviews`); the caller passes the
connections with live requests as `requested`. Without one such a grant is no grant.

Nothing granted means no access, unless the operator set a `default_access` for everyone.
A credential can only narrow this: a per-connection credential reaches its one connection,
and an API key only the connection patterns in its scopes (and the admin API only with the
`admin` scope).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

from gateway.policy.approval import ReviewTerms

ACCESS_LEVELS = ("read-only", "read-write", "admin")
ADMIN_SCOPE = "admin"


def _rank(access: str) -> int:
    return ACCESS_LEVELS.index(access)


@dataclass(frozen=True, slots=True)
class Grant:
    connection: str  # a name or a shell glob
    access: str
    request: ReviewTerms | None = None  # set: holds only through an approved access request

    def __post_init__(self) -> None:
        if self.access not in ACCESS_LEVELS:
            raise ValueError(f"access must be one of {', '.join(ACCESS_LEVELS)}")

    def matches(self, connection: str) -> bool:
        return fnmatch.fnmatchcase(connection, self.connection)


@dataclass(frozen=True, slots=True)
class Role:
    name: str
    groups: frozenset[str] = frozenset()
    users: frozenset[str] = frozenset()
    admin: bool = False
    grants: tuple[Grant, ...] = ()

    def applies_to(self, user: str, groups: Iterable[str]) -> bool:
        return user in self.users or not self.groups.isdisjoint(groups)


@dataclass(frozen=True, slots=True)
class Decision:
    access: str | None  # None: refused
    reason: str
    # Refused, but an on-request grant would hold with an approved access request: its terms.
    on_request: ReviewTerms | None = None

    def refusal(self, user: str, connection: str) -> str:
        """What the refused person reads: and, when a request would grant access, how to ask."""
        if self.on_request is None:
            return f"user {user!r} has no access to connection {connection!r}"
        hint = min(3600, self.on_request.max_duration)
        # Short enough for a WebSocket close reason (123 bytes) with everyday names.
        return (
            f"user {user!r} needs an approved access request for {connection!r}: "
            f'wardgate request {connection} --for {_duration(hint)} --reason "..."'
        )


def _duration(seconds: int) -> str:
    """`3600` -> `1h`, as `wardgate request --for` reads it."""
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


class AccessPolicy:
    def __init__(self, roles: Sequence[Role] = (), *, default_access: str | None = None) -> None:
        if default_access is not None and default_access not in ACCESS_LEVELS:
            raise ValueError(f"default_access must be one of {', '.join(ACCESS_LEVELS)}")
        self.roles = tuple(roles)
        self.default_access = default_access

    @property
    def on_request(self) -> bool:
        """Whether any grant holds only on request (session opens must look up requests)."""
        return any(g.request is not None for r in self.roles for g in r.grants)

    def roles_of(self, user: str, groups: Iterable[str]) -> list[Role]:
        groups = tuple(groups)
        return [r for r in self.roles if r.applies_to(user, groups)]

    def is_admin(self, user: str, groups: Iterable[str]) -> bool:
        return any(r.admin for r in self.roles_of(user, groups))

    def requestable(
        self, user: str, groups: Iterable[str], connection: str
    ) -> tuple[str, ReviewTerms] | None:
        """The highest on-request grant of `user` on `connection`: (access, terms), or None."""
        best: tuple[str, ReviewTerms] | None = None
        for role in self.roles_of(user, groups):
            for grant in role.grants:
                if grant.request is None or not grant.matches(connection):
                    continue
                if best is None or _rank(grant.access) > _rank(best[0]):
                    best = (grant.access, grant.request)
        return best

    def grants_of(self, user: str, groups: Iterable[str]) -> list[Grant]:
        """Every grant that applies to this user, for `whoami`."""
        out = [g for r in self.roles_of(user, groups) for g in r.grants]
        if self.default_access is not None:
            out.append(Grant("*", self.default_access))
        return out

    def decide(
        self,
        *,
        user: str,
        groups: Iterable[str],
        is_admin: bool,
        connection: str,
        bound_connection: str | None = None,
        scopes: tuple[str, ...] | None = None,
        requested: Collection[str] = (),
    ) -> Decision:
        """The access `user` gets to `connection` with this credential, or why none."""
        if bound_connection is not None and bound_connection != connection:
            return Decision(None, f"the credential is valid for connection {bound_connection!r}")
        if scopes is not None and not any(
            s != ADMIN_SCOPE and fnmatch.fnmatchcase(connection, s) for s in scopes
        ):
            return Decision(None, "the API key's scopes do not include this connection")
        if is_admin:
            return Decision("admin", "administrator")
        best: str | None = None
        why = ""
        for role in self.roles_of(user, groups):
            for grant in role.grants:
                if grant.request is not None and connection not in requested:
                    continue  # on request only, and no approved request is live
                if grant.matches(connection) and (
                    best is None or _rank(grant.access) > _rank(best)
                ):
                    best, why = grant.access, f"role {role.name!r}"
                    if grant.request is not None:
                        why += " (approved access request)"
        if best is None and self.default_access is not None:
            best, why = self.default_access, "default access"
        if best is None:
            found = self.requestable(user, groups, connection)
            if found is not None:
                return Decision(
                    None, "granted on request only: no approved access request", found[1]
                )
            return Decision(None, "no role grants this connection")
        return Decision(best, why)
