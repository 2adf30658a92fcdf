"""Masking rules in the gateway config: validation and per-session resolution."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from gateway.policy.masking import (
    MaskingRuleConfig,
    MaskingUnavailable,
    resolve,
    resolve_masking,
    token_key,
)
from gateway.policy.rules import PolicyConfig, Subject
from shared.masking.spec import Strategy
from shared.tunnel.frames import Target

RULES = PolicyConfig.model_validate(
    {
        "masking": [
            {"name": "pii", "detectors": ["email", "card"], "strategy": "redact"},
            {
                "name": "ids",
                "match": {"groups": ["support"], "connections": ["pg-*"]},
                "columns": ["Customers.Tax_ID"],
                "regex": [r"EMP-\d+"],
                "strategy": "token",
            },
        ]
    }
).masking
SUPPORT = Subject("sam", groups=("support",))
DBA = Subject("dana", groups=("dba",))


def test_rules_validate() -> None:
    assert RULES[1].columns == ["customers.tax_id"]
    for bad in (
        {"name": "x", "detectors": ["passport"]},
        {"name": "x"},
        {"name": "x", "regex": ["("]},
        {"name": "x", "regex": ["a*"]},  # matches the empty string
        {"name": "x", "columns": ["a.b.c.d"]},
        {"name": "x", "columns": ["a"], "strategy": "shuffle"},
    ):
        with pytest.raises(ValidationError):
            MaskingRuleConfig.model_validate(bad)


def test_resolution_follows_identity_and_connection() -> None:
    spec = resolve(RULES, SUPPORT, "pg-main", b"s" * 32)
    assert [r.name for r in spec.rules] == ["pii", "ids"]
    assert spec.rules[1].strategy is Strategy.TOKEN
    assert spec.token_key == token_key(b"s" * 32, "pg-main")
    assert spec.token_key != token_key(b"s" * 32, "pg-other")
    assert [r.name for r in resolve(RULES, DBA, "pg-main", None).rules] == ["pii"]
    assert [r.name for r in resolve(RULES, SUPPORT, "mysql", None).rules] == ["pii"]


def test_tokens_without_a_secret_and_masking_a_tcp_connection_fail_closed() -> None:
    with pytest.raises(MaskingUnavailable):
        resolve(RULES, SUPPORT, "pg-main", None)
    tcp = Target("pg-cache", "tcp", "h", 1)
    with pytest.raises(MaskingUnavailable, match="cannot be masked"):
        resolve_masking(RULES, SUPPORT, tcp, b"s" * 32)
    # A rule that merely applies everywhere leaves tcp sessions alone.
    assert resolve_masking(RULES, DBA, tcp, None) == tcp
    pg = Target("pg-main", "postgres", "h", 1)
    assert resolve_masking(RULES, SUPPORT, pg, b"s" * 32).masking.rules
