"""One classification of what writes: the read-only check and the guardrails agree.

A guarded connection whose only rule allows reads must stop every statement a read-only
grant stops, and a statement the guardrails call a write must be one the read-only check
refuses. Checked on the read-only check's own tables, on every function of the shared table
(`gateway.policy.writes`), and on statements hypothesis builds around them.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.policy.facts import UnparsableSQL, statement_facts
from gateway.policy.readonly import DENIED_FUNCTIONS, check_read_only
from gateway.policy.rules import Match, Policy, PolicyConfig, Rule, Subject
from gateway.policy.writes import FUNCTIONS
from tests.gateway.test_readonly import ALLOWED, REFUSED

ALICE = Subject("alice")
READS_ONLY = Policy(
    PolicyConfig(
        rules=[Rule(name="reads", effect="allow", match=Match(kinds=["read"]))],
        guarded_connections=["db"],
    )
)
NO_WRITES = Policy(
    PolicyConfig(rules=[Rule(name="no-writes", effect="deny", match=Match(kinds=["write"]))])
)

# Statements beyond the read-only check's own tables: the ones the issue names, and each
# statement type the decision about "what writes" had to place.
EXTRA = [
    "select nextval('app.seq')",
    "select pg_catalog.setval('app.seq', 10, true)",
    "select lo_from_bytea(0, '\\x00')",
    "select lo_put(1, 0, 'x')",
    "select lo_open(1, 131072)",
    "select lowrite(0, 'x')",
    "select txid_current()",
    "select pg_try_advisory_xact_lock_shared(1)",
    "select set_config('search_path', 'app', false)",
    "select count(*) from t where id = nextval('s')",
    "with n as (select nextval('s') as v) select v from n",
    "select * from generate_series(1, 3) g, lateral (select setval('s', g)) x",
    "explain analyze select nextval('s')",
    "declare c cursor for select lo_from_bytea(0, 'x')",
    "prepare p as select setval('s', 1)",
    "copy (select nextval('s')) to stdout",
    "copy t to program 'cat'",
    "call app.proc()",
    "do $$ begin perform 1; end $$",
    "lock table t in access share mode",
    "listen ch",
    "notify ch",
    "select brin_summarize_new_values('i')",
    "select pg_stat_reset()",
    "select lower('X')",
    "select app.pure(1)",
    "select count(*) from t",
]

CORPUS = [*ALLOWED, *(sql for sql, _ in REFUSED), *EXTRA]


def _pure_read(sql: str) -> bool:
    """The guardrails' view: every statement only reads, nothing flagged or opaque."""
    try:
        facts = statement_facts(sql)
    except UnparsableSQL:
        return False
    return all(f.kinds == ("read",) and not f.flags and not f.opaque for f in facts)


def _writes(sql: str) -> bool:
    try:
        return any("write" in f.kinds for f in statement_facts(sql))
    except UnparsableSQL:
        return False


def _agree(sql: str) -> None:
    read_only = check_read_only(sql)
    guarded = READS_ONLY.evaluate(ALICE, "db", sql)
    if not read_only.allowed:
        # What a read-only grant stops, a guarded connection that allows reads stops.
        assert not guarded.allowed, (sql, read_only.reason, guarded.reason)
    if _pure_read(sql):
        assert read_only.allowed, (sql, read_only.reason)
    if _writes(sql):
        # What the guardrails call a write, the read-only check refuses, and a rule that
        # denies writes denies.
        assert not read_only.allowed, sql
        assert not NO_WRITES.evaluate(ALICE, "db", sql).allowed, sql


@pytest.mark.parametrize("sql", CORPUS)
def test_read_only_and_guardrails_agree_on_the_corpus(sql: str) -> None:
    _agree(sql)


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_every_function_of_the_shared_table_is_stopped_by_both(name: str) -> None:
    for sql in (f"select {name}(1)", f"select * from t where a = pg_catalog.{name}($1)"):
        assert not check_read_only(sql).allowed
        decision = READS_ONLY.evaluate(ALICE, "db", sql)
        assert not decision.allowed
        assert "no rule allows" in decision.reason
        if FUNCTIONS[name].kind == "write":
            assert not NO_WRITES.evaluate(ALICE, "db", sql).allowed
            assert "write" in statement_facts(sql)[0].kinds


def test_the_read_only_list_is_the_shared_table() -> None:
    assert set(DENIED_FUNCTIONS) == set(FUNCTIONS)


@pytest.mark.parametrize(
    ("sql", "kinds"),
    [
        ("select nextval('s')", ("write", "read")),
        ("select setval('s', 1)", ("write", "read")),
        ("select lo_from_bytea(0, 'x')", ("write", "read")),
        ("select pg_advisory_lock(1)", ("utility", "read")),
        ("select pg_notify('c', 'x')", ("utility", "read")),
        ("select set_config('search_path', '', false)", ("utility", "read")),
        ("select pg_read_file('x')", ("read",)),
        ("lock table t", ("utility",)),
        ("notify c", ("utility",)),
        ("listen c", ("utility",)),
        ("call p()", ("utility",)),
    ],
)
def test_the_kinds_a_writing_builtin_gives_a_statement(sql: str, kinds: tuple[str, ...]) -> None:
    assert statement_facts(sql)[0].kinds == kinds


_WRAPPERS = [
    "select {call}",
    "select * from t where id = {call}",
    "select (select {call}) from t",
    "with c as (select {call} as v) select v from c",
    "select * from t order by {call}",
    "explain analyze select {call}",
    "prepare p as select {call}",
    "declare c cursor for select {call}",
    "copy (select {call}) to stdout",
    "values ({call})",
    "select 1; select {call}",
    "select {call}; select 1",
    "select case when a then {call} end from t",
    "select coalesce(null, {call})",
]
_CALLS = [
    *(f"{name}(1)" for name in sorted(FUNCTIONS)),
    *(f"pg_catalog.{name}('x', 1)" for name in ("nextval", "setval", "lo_from_bytea")),
    "lower('x')",
    "now()",
    "count(*)",
    "app.pure(1)",
]


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(_WRAPPERS), st.sampled_from(_CALLS))
def test_read_only_and_guardrails_agree_wherever_the_call_sits(wrapper: str, call: str) -> None:
    _agree(wrapper.format(call=call))
