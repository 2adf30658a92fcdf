"""From verified claims to a Wardgate user: name, groups, and workload trust matching (pure).

A person's user name comes from one configured claim (`preferred_username` by default); a
missing or unusable claim refuses the sign-in rather than falling back to another claim,
since a fallback would let a user choose which claim names them. Groups are the configured
groups claim (a list of strings, or one string) plus `claim_groups` rules (claim value glob
-> group). Workload tokens become a machine user when every claim of a trust entry matches.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

USER_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}$")
MAX_GROUPS = 256


class ClaimsError(Exception):
    """The claims cannot name a user."""


class ClaimGroupRule(Protocol):
    claim: str
    value: str
    group: str


class TrustRule(Protocol):
    name: str
    issuer: str
    audience: str
    claims: dict[str, str | list[str]]


def user_name(claims: Mapping[str, Any], claim: str) -> str:
    value = claims.get(claim)
    if not isinstance(value, str) or not USER_NAME_RE.match(value):
        raise ClaimsError(f"the {claim!r} claim is missing or not a usable user name")
    return value


def groups_from(
    claims: Mapping[str, Any], groups_claim: str, rules: Iterable[ClaimGroupRule] = ()
) -> tuple[str, ...]:
    raw = claims.get(groups_claim)
    groups: list[str] = []
    if isinstance(raw, str):
        groups.append(raw)
    elif isinstance(raw, list):
        groups.extend(g for g in raw if isinstance(g, str))
    for rule in rules:
        value = claims.get(rule.claim)
        values = value if isinstance(value, list) else [value]
        if any(_matches(v, rule.value) for v in values):
            groups.append(rule.group)
    unique = sorted(set(g for g in groups if g))
    return tuple(unique[:MAX_GROUPS])


def _matches(value: object, pattern: str) -> bool:
    if isinstance(value, bool):
        value = "true" if value else "false"
    if not isinstance(value, str | int | float):
        return False
    return fnmatch.fnmatchcase(str(value), pattern)


def trust_matches(claims: Mapping[str, Any], rule: TrustRule) -> str | None:
    """None when every claim of `rule` matches, else the name of the first that does not."""
    for name, wanted in rule.claims.items():
        patterns = wanted if isinstance(wanted, list) else [wanted]
        if not any(_matches(claims.get(name), p) for p in patterns):
            return name
    return None
