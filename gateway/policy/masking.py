"""Masking rules in the gateway config (`policy.masking`), resolved per session.

Pure: the config model, and `resolve` which picks the rules that apply to one identity on
one connection (the same who/where conditions as the guardrails: users, groups, roles,
identity, connections) and turns them into the typed `MaskSpec` the agent receives in
OpenSession. The token key is derived per connection with HKDF-SHA256 from the gateway's
secret key, so tokens are stable for a connection across sessions and agents, differ
between connections, and the gateway secret itself never leaves the gateway.

    policy:
      masking:
        - name: contact-details
          match: {groups: [support]}
          detectors: [email, phone]
          strategy: partial
        - name: customer-ids
          columns: ["customers.tax_id", "*ssn*"]
          strategy: token
          allow_lookup: true   # WHERE tax_id = $1 is allowed (gateway/policy/lineage.py)
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from typing import Literal

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gateway.policy.who import Subject, WhoMatch
from shared.masking.detectors import BUILTIN
from shared.masking.spec import MaskRule, MaskSpec, Strategy
from shared.tunnel.frames import Target

_STRATEGIES = {"redact": Strategy.REDACT, "partial": Strategy.PARTIAL, "token": Strategy.TOKEN}
_HKDF_INFO = b"wardgate/masking/token/v1\x00"


class MaskMatch(WhoMatch):
    """Who and where a masking rule applies; the guardrails' identity conditions."""


class MaskingRuleConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    match: MaskMatch = Field(default_factory=MaskMatch)  # who and where it applies
    columns: list[str] = Field(default_factory=list)  # [[schema.]table.]column globs
    detectors: list[str] = Field(default_factory=list)  # email card iban phone ...
    regex: list[str] = Field(default_factory=list)  # your own patterns (Python re)
    strategy: Literal["redact", "partial", "token"] = "redact"  # what replaces a value
    # Equality lookups (`col = $1`, IN, IS NULL) may use the masked columns in WHERE/JOIN
    # (gateway/policy/lineage.py); off: a masked column never selects rows.
    allow_lookup: bool = False

    @field_validator("columns")
    @classmethod
    def _columns(cls, value: list[str]) -> list[str]:
        for pattern in value:
            if not pattern or pattern.count(".") > 2:
                raise ValueError(
                    f"column pattern {pattern!r}: use column, table.column or schema.table.column"
                )
        return [v.lower() for v in value]

    @field_validator("detectors")
    @classmethod
    def _detectors(cls, value: list[str]) -> list[str]:
        bad = [d for d in value if d not in BUILTIN]
        if bad:
            raise ValueError(f"unknown detectors {bad}: use {', '.join(BUILTIN)} or regex")
        return value

    @field_validator("regex")
    @classmethod
    def _regex(cls, value: list[str]) -> list[str]:
        for pattern in value:
            try:
                compiled = re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"regex {pattern!r}: {exc}") from None
            if compiled.match(""):
                raise ValueError(f"regex {pattern!r} matches the empty string")
        return value

    @model_validator(mode="after")
    def _something(self) -> MaskingRuleConfig:
        if not (self.columns or self.detectors or self.regex):
            raise ValueError(f"masking rule {self.name!r} needs columns, detectors or regex")
        return self

    def rule(self) -> MaskRule:
        return MaskRule(
            name=self.name,
            strategy=_STRATEGIES[self.strategy],
            columns=tuple(self.columns),
            detectors=tuple(self.detectors),
            patterns=tuple(self.regex),
        )


def token_key(secret: bytes, connection: str) -> bytes:
    """The HMAC key of the token strategy on `connection` (HKDF-SHA256 of the secret)."""
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=_HKDF_INFO + connection.encode()
    ).derive(secret)


class MaskingUnavailable(Exception):
    """Masking applies but cannot be honoured (no secret for tokens)."""


def resolve(
    rules: Iterable[MaskingRuleConfig], who: Subject, connection: str, secret: bytes | None
) -> MaskSpec:
    """The masking spec of one session; empty when no rule applies."""
    chosen = tuple(r.rule() for r in rules if r.match.applies(who, connection))
    if not chosen:
        return MaskSpec()
    key = b""
    if any(r.strategy is Strategy.TOKEN for r in chosen):
        if secret is None:
            raise MaskingUnavailable(
                "masking with strategy token needs the gateway's secret_key to derive its key"
            )
        key = token_key(secret, connection)
    return MaskSpec(chosen, key)


def resolve_masking(
    rules: Iterable[MaskingRuleConfig], who: Subject, target: Target, secret: bytes | None
) -> Target:
    """`target` with the masking of this session. Fail closed: rules that name a connection
    whose protocol the agent cannot mask (anything but postgres) refuse the session."""
    rules = list(rules)
    if target.type != "postgres":
        named = [
            r.name for r in rules if r.match.connections and r.match.applies(who, target.connection)
        ]
        if named:
            raise MaskingUnavailable(
                f"rule {named[0]!r} masks connection {target.connection!r}, "
                f"whose {target.type} traffic cannot be masked"
            )
        return target
    spec = resolve(rules, who, target.connection, secret)
    return target if spec.empty else dataclasses.replace(target, masking=spec)
