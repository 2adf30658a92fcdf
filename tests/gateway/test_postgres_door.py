"""The PostgreSQL front door's judge: read-only access, guardrails, then budgets, in one call.

The session (`gateway.protocols.pgsession`) asks for a verdict per Query, Parse, Bind and
fastpath call; these are the verdicts it gets from the real policy objects.
"""

from __future__ import annotations

import time
from typing import Any

from gateway.policy.lineage_check import LineageCheck
from gateway.policy.rules import Policy, PolicyConfig, Subject
from gateway.policystore import FixedPolicy, SessionPolicy
from gateway.protocols.pgactions import Hold, Judge, Refusal
from gateway.protocols.pgrelay import judge
from shared.pgwire.frontend import Bind, Parse, Query

ALICE = Subject("alice", groups=("data",))
RULES: list[dict[str, Any]] = [
    {
        "name": "no-secret-writes",
        "effect": "deny",
        "message": "writes to secrets need a ticket",
        "match": {"kinds": ["write"], "tables": ["secrets"]},
    },
    {
        "name": "accounts-review",
        "effect": "review",
        "message": "writes need a second person",
        "match": {"kinds": ["write"], "tables": ["accounts"]},
        "review": {"approvers": {"groups": ["dba"]}, "timeout": 60},
    },
]


def session_policy(*rules: dict[str, Any]) -> SessionPolicy:
    config = PolicyConfig.model_validate({"rules": list(rules)})
    return SessionPolicy(FixedPolicy(Policy(config)), None, ALICE, "pg-main")


async def test_guardrails_refuse_hold_or_pass_a_query() -> None:
    policy = session_policy(*RULES)
    denied = await judge(policy, None, False, Judge(b"Q", Query("delete from secrets"), True))
    assert isinstance(denied, Refusal) and denied.rules == ("no-secret-writes",)
    assert denied.reason.startswith("policy: writes to secrets need a ticket")
    held = await judge(
        policy, None, False, Judge(b"P", Parse("", "update accounts set a = 1"), True)
    )
    assert isinstance(held, Hold) and held.rules == ("accounts-review",)
    assert held.terms.timeout == 60 and held.budgets == ()
    assert await judge(policy, None, False, Judge(b"Q", Query("select 1"), True)) is None


async def test_read_only_access_comes_before_the_guardrails() -> None:
    policy = session_policy()
    refused = await judge(policy, None, True, Judge(b"Q", Query("insert into t values (1)"), True))
    assert isinstance(refused, Refusal) and refused.rules == () and refused.sqlstate == "42501"
    assert refused.reason.startswith("read-only access")
    assert await judge(policy, None, True, Judge(b"Q", Query("select 1"), True)) is None


async def test_the_fastpath_is_refused_where_sql_is_checked() -> None:
    call = Judge(b"F", None, True)  # not decoded: refused whatever it calls
    refused = await judge(session_policy(*RULES), None, False, call)
    assert isinstance(refused, Refusal) and "fastpath" in refused.reason
    assert await judge(session_policy(), None, False, call) is None  # nothing to bypass


async def test_a_bind_without_budgets_needs_no_verdict() -> None:
    assert (
        await judge(session_policy(*RULES), None, False, Judge(b"B", Bind("", ""), False)) is None
    )


async def test_masked_columns_that_select_rows_are_refused_after_the_guardrails() -> None:
    config = PolicyConfig.model_validate(
        {
            "rules": RULES,
            "masking": [{"name": "cards", "match": {"users": ["alice"]}, "columns": ["card"]}],
        }
    )
    policy = SessionPolicy(FixedPolicy(Policy(config)), None, ALICE, "pg-main")
    asked: list[str] = []

    async def ask(sql: str) -> list[tuple[str | None, ...]]:
        asked.append(sql)
        return [("r", None, "accounts", "public", "accounts", '["id", "card"]', None)]

    lineage = LineageCheck(ask, time.monotonic)
    probe = Parse("", "select id from accounts where card like $1")
    refused = await judge(policy, None, False, Judge(b"P", probe, True), lineage)
    assert isinstance(refused, Refusal)
    assert (refused.sqlstate, refused.rules) == ("42501", ("cards",))
    assert refused.reason.startswith("policy: masked column accounts.card (rule 'cards')")
    plain = Query("select card from accounts where id = 1")
    assert await judge(policy, None, False, Judge(b"Q", plain, True), lineage) is None
    # the guardrails answer first: their refusal, not the masking one
    write = Query("delete from secrets where card like '4%'")
    denied = await judge(policy, None, False, Judge(b"Q", write, True), lineage)
    assert isinstance(denied, Refusal) and denied.rules == ("no-secret-writes",)
