"""Guardrail rules: which rules apply, deny wins, allow is strict, guarded connections."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from gateway.config import GatewayConfig
from gateway.policy.budgets import Usage
from gateway.policy.explain import explain
from gateway.policy.grants import AccessPolicy, Grant, Role
from gateway.policy.rules import Policy, PolicyConfig, Subject

ALICE = Subject(user="alice", groups=("data",), roles=("analysts",))
BOT = Subject(user="ci-deploy", groups=("deployers",), machine=True)


def policy(*rules: dict[str, Any], guarded: tuple[str, ...] = ()) -> Policy:
    return Policy(
        PolicyConfig.model_validate({"rules": list(rules), "guarded_connections": list(guarded)})
    )


NO_SECRET_WRITES = {
    "name": "no-secret-writes",
    "effect": "deny",
    "message": "writes to secrets need a ticket",
    "match": {"kinds": ["write", "ddl", "dcl"], "tables": ["secrets"]},
}


def test_a_deny_rule_denies_with_its_message_and_name() -> None:
    p = policy(NO_SECRET_WRITES)
    d = p.evaluate(ALICE, "pg-main", "update secrets set v = 1 where id = 2")
    assert d.effect == "deny" and d.rules == ("no-secret-writes",)
    assert d.reason == "writes to secrets need a ticket (rule 'no-secret-writes')"
    assert p.evaluate(ALICE, "pg-main", "select * from secrets").allowed
    assert p.evaluate(ALICE, "pg-main", "update other set v = 1 where id = 2").allowed


def test_multi_statement_queries_are_denied_when_any_statement_is() -> None:
    d = policy(NO_SECRET_WRITES).evaluate(
        ALICE, "pg-main", "select 1; delete from public.secrets where id = 1; select 2"
    )
    assert not d.allowed
    assert d.reason.startswith("statement 2 of 3: ")
    assert [s.effect for s in d.statements] == ["allow", "deny", "allow"]


def test_identity_and_connection_conditions_choose_the_rules_that_apply() -> None:
    p = policy(
        {"name": "bots", "effect": "deny", "match": {"identity": "machine", "kinds": ["ddl"]}},
        {"name": "prod", "effect": "deny", "match": {"connections": ["pg-prod*"]}},
        {"name": "bob", "effect": "deny", "match": {"users": ["bo?"]}},
        {"name": "data", "effect": "deny", "match": {"groups": ["data"], "kinds": ["dcl"]}},
        {"name": "role", "effect": "deny", "match": {"roles": ["analysts"], "flags": ["row_lock"]}},
    )
    assert not p.evaluate(BOT, "pg-main", "create table t (a int)").allowed
    assert p.evaluate(ALICE, "pg-main", "create table t (a int)").allowed
    assert not p.evaluate(ALICE, "pg-prod-eu", "select 1").allowed
    assert p.evaluate(ALICE, "pg-main", "select 1").allowed
    assert not p.evaluate(Subject("bob"), "pg-main", "select 1").allowed
    assert not p.evaluate(ALICE, "pg-main", "grant select on t to x").allowed
    assert p.evaluate(BOT, "pg-main", "grant select on t to x").allowed
    assert not p.evaluate(ALICE, "pg-main", "select * from t for update").allowed
    assert [r.name for r in p.applicable(ALICE, "pg-main")] == ["data", "role"]


def test_deny_wins_over_allow() -> None:
    p = policy(
        {"name": "reads", "effect": "allow", "match": {"kinds": ["read"]}},
        {"name": "no-files", "effect": "deny", "match": {"flags": ["outside_data"]}},
    )
    d = p.evaluate(ALICE, "pg-main", "select pg_read_file('/etc/passwd')")
    assert not d.allowed and d.rules == ("no-files",)


def test_a_guarded_connection_denies_what_no_rule_allows() -> None:
    p = policy(
        {"name": "reads", "effect": "allow", "match": {"kinds": ["read", "transaction"]}},
        {
            "name": "orders",
            "effect": "allow",
            "match": {"kinds": ["write"], "tables": ["app.orders"]},
        },
        guarded=("pg-*",),
    )
    ok = p.evaluate(ALICE, "pg-main", "select * from orders")
    assert ok.allowed and ok.rules == ("reads",)
    assert p.evaluate(ALICE, "pg-main", "begin; select 1; commit").allowed
    assert p.evaluate(ALICE, "pg-main", "insert into app.orders values (1)").allowed
    # Allow is strict: every table must be allowed, and flags must be allowed by name.
    assert not p.evaluate(ALICE, "pg-main", "insert into orders select * from secrets").allowed
    assert not p.evaluate(ALICE, "pg-main", "delete from orders").allowed  # where-less
    assert not p.evaluate(ALICE, "pg-main", "select pg_read_file('x')").allowed
    assert not p.evaluate(ALICE, "pg-main", "do $$ begin null; end $$").allowed
    denied = p.evaluate(ALICE, "pg-main", "drop table orders")
    assert not denied.allowed and "guarded connection" in denied.reason
    # Outside the guarded connections nothing applies: allowed, and never even parsed.
    assert p.evaluate(ALICE, "mysql-x", "drop table orders").allowed
    assert p.for_session(ALICE, "mysql-x") is None


def test_unparsable_text_is_denied_where_rules_can_deny() -> None:
    assert not policy(guarded=("pg-*",)).evaluate(ALICE, "pg-main", "selec 1").allowed
    assert not policy(NO_SECRET_WRITES).evaluate(ALICE, "pg-main", "selec 1").allowed
    allow_only = policy({"name": "r", "effect": "allow", "match": {"kinds": ["read"]}})
    assert allow_only.evaluate(ALICE, "pg-main", "selec 1").allowed
    assert allow_only.for_session(ALICE, "pg-main") is None


def test_table_globs_schemas_and_case() -> None:
    p = policy(
        {"name": "audit", "effect": "deny", "match": {"tables": ["audit.*"], "kinds": ["write"]}},
        {"name": "pii", "effect": "deny", "match": {"tables": ["*_pii"]}},
    )
    assert not p.evaluate(ALICE, "c", "delete from audit.log where id = 1").allowed
    assert not p.evaluate(ALICE, "c", 'delete from "AUDIT"."Log" where id = 1').allowed
    # Unqualified: its schema depends on the search_path, so a schema pattern matches it.
    assert not p.evaluate(ALICE, "c", "delete from log where id = 1").allowed
    assert p.evaluate(ALICE, "c", "delete from app.log where id = 1").allowed
    assert not p.evaluate(ALICE, "c", "select * from app.users_pii").allowed
    assert not p.evaluate(ALICE, "c", "select * from mydb.app.users_pii").allowed


def test_functions_condition() -> None:
    p = policy({"name": "no-sleep", "effect": "deny", "match": {"functions": ["pg_sleep*"]}})
    assert not p.evaluate(ALICE, "c", "select pg_catalog.PG_SLEEP(10)").allowed
    assert not p.evaluate(ALICE, "c", "select pg_sleep_for('1 min')").allowed
    assert p.evaluate(ALICE, "c", "select now()").allowed


@pytest.mark.parametrize(
    "bad",
    [
        {"rules": [{"name": "x", "effect": "mask"}]},
        {"rules": [{"name": "x", "effect": "deny", "match": {"kinds": ["reads"]}}]},
        {"rules": [{"name": "x", "effect": "deny", "match": {"flags": ["files"]}}]},
        {"rules": [{"name": "x", "effect": "deny", "match": {"tabels": ["t"]}}]},
        {"rules": [{"name": "x", "effect": "deny"}, {"name": "x", "effect": "allow"}]},
    ],
)
def test_invalid_rules_are_refused_at_load(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        GatewayConfig.model_validate({"policy": bad})


def test_the_gateway_config_carries_the_policy() -> None:
    cfg = GatewayConfig.model_validate(
        {"policy": {"rules": [NO_SECRET_WRITES], "guarded_connections": ["pg-prod"]}}
    )
    guard = cfg.guardrails()
    assert guard.guarded("pg-prod") and not guard.guarded("pg-main")
    assert not GatewayConfig().guardrails().config.rules


def test_explain_runs_the_checks_in_front_door_order() -> None:
    access = AccessPolicy(
        [Role("analysts", groups=frozenset({"data"}), grants=(Grant("pg-*", "read-only"),))]
    )
    guard = policy(NO_SECRET_WRITES)
    out = explain(
        guard, access, user="alice", groups=("data",), connection="pg-main", sql="select 1"
    )
    assert out["decision"] == "allow" and out["access"] == "read-only"
    assert out["roles"] == ["analysts"] and out["applicable_rules"] == ["no-secret-writes"]
    out = explain(
        guard, access, user="alice", groups=("data",), connection="pg-main", sql="drop table x"
    )
    assert out["decision"] == "deny" and out["reason"].startswith("read-only access")
    out = explain(
        guard,
        access,
        user="root",
        groups=(),
        is_admin=True,
        connection="pg-main",
        sql="truncate secrets",
    )
    assert out["decision"] == "deny" and out["rules"] == ["no-secret-writes"]
    assert out["statements"][0]["facts"] == "kind=write tables=secrets flags=where_less_write"
    out = explain(guard, access, user="eve", groups=(), connection="pg-main", sql="select 1")
    assert out["decision"] == "deny" and out["reason"].startswith("no access")


def test_rules_that_cannot_be_enforced_on_unreadable_connections() -> None:
    p = policy(
        NO_SECRET_WRITES,
        {"name": "named", "effect": "deny", "match": {"connections": ["raw-*"], "kinds": ["ddl"]}},
        {"name": "bob", "effect": "deny", "message": "on leave", "match": {"users": ["bob"]}},
        guarded=("locked",),
    )
    assert p.unenforceable(ALICE, "cache") is None
    assert p.unenforceable(ALICE, "raw-1") == (
        "rule 'named' applies to connection 'raw-1', whose statements cannot be checked",
        ("named",),
    )
    assert p.unenforceable(Subject("bob"), "cache") == ("on leave (rule 'bob')", ("bob",))
    blocked = p.unenforceable(ALICE, "locked")
    assert blocked is not None and "guarded" in blocked[0]
    access = AccessPolicy([Role("all", users=frozenset({"alice"}), grants=(Grant("*", "admin"),))])
    out = explain(
        p,
        access,
        user="alice",
        groups=(),
        connection="raw-1",
        sql="select 1",
        statements_checked=False,
    )
    assert out["decision"] == "deny" and out["rules"] == ["named"]


def test_explain_lists_the_masking_rules_and_budgets_of_the_session() -> None:
    config = PolicyConfig.model_validate(
        {
            "masking": [
                {"name": "ssn", "match": {"groups": ["support"]}, "columns": ["*ssn*"]},
                {"name": "pii", "detectors": ["email"], "strategy": "partial"},
                {"name": "prod", "match": {"connections": ["pg-prod"]}, "regex": ["EMP-\\d+"]},
            ],
            "budgets": [
                {"name": "daily", "rows_per_day": 10},
                {"name": "bots", "match": {"identity": "machine"}, "bytes_per_day": 5},
            ],
        }
    )
    access = AccessPolicy([Role("all", users=frozenset({"alice"}), grants=(Grant("*", "admin"),))])
    out = explain(
        Policy(config),
        access,
        user="alice",
        groups=("support",),
        connection="pg-main",
        sql="select 1",
        usage={"daily": Usage(10, 99)},
    )
    assert [m["name"] for m in out["masking"]] == ["ssn", "pii"]
    assert out["masking"][0] == {
        "name": "ssn",
        "columns": ["*ssn*"],
        "detectors": [],
        "regex": [],
        "strategy": "redact",
    }
    assert out["budgets"] == [
        {
            "name": "daily",
            "rows_per_day": 10,
            "bytes_per_day": None,
            "on_exceed": "stop",
            "review": None,
            "used": {"rows": 10, "bytes": 99},
            "exhausted": True,
        }
    ]
    unread = explain(
        Policy(config), access, user="alice", groups=(), connection="pg-prod", sql="select 1"
    )
    assert [m["name"] for m in unread["masking"]] == ["pii", "prod"]
    assert unread["budgets"][0]["used"] is None and unread["budgets"][0]["exhausted"] is None
