"""Volatile user functions: the guardrails ask the catalog what a called function does.

The catalog here is a table of pg_proc rows answering `lookup_sql` the way the server does
(the end-to-end tests in tests/e2e/test_policy_functions.py ask a real server).
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from pydantic import ValidationError

from gateway.policy.facts import statement_facts
from gateway.policy.functions import (
    CACHE_TTL,
    FunctionCheck,
    FunctionInfo,
    LookupFailed,
    lookup_sql,
    parse_answer,
)
from gateway.policy.rules import Match, Policy, PolicyConfig, Rule, SessionGuard, Subject

ALICE = Subject("alice")
Row = tuple[str | None, ...]


def fn(schema: str, name: str, volatility: str, language: str = "plpgsql", **kw: bool) -> Row:
    trusted = kw.get("trusted", language not in ("plpython3u", "plperlu"))
    builtin = kw.get("builtin", schema == "pg_catalog")
    return (
        "f",
        schema,
        name,
        volatility,
        language,
        "t" if trusted else "f",
        "t" if builtin else "f",
    )


CATALOG: list[Row] = [
    fn("pg_catalog", "lower", "i", "internal"),
    fn("pg_catalog", "now", "s", "internal"),
    fn("pg_catalog", "random", "v", "internal"),
    fn("app", "bump", "v"),
    fn("app", "pure", "i", "sql"),
    fn("app", "report", "s", "plpython3u"),
    fn("app", "cleanup", "v"),
    fn("other", "bump2", "v"),
    fn("pg_temp_3", "tmp", "v"),
]


class Catalog:
    """Answers the lookup as the server would, for a given search path."""

    def __init__(self, path: tuple[str, ...] = ("pg_catalog", "public", "app")) -> None:
        self.rows = list(CATALOG)
        self.path = path
        self.asked: list[str] = []
        self.fail: str | None = None

    async def ask(self, sql: str) -> Sequence[Row]:
        self.asked.append(sql)
        if self.fail is not None:
            raise LookupFailed(self.fail)
        wanted = {r[2] for r in self.rows if bytes(r[2] or "", "utf-8").hex() in sql}
        out = [r for r in self.rows if r[2] in wanted]
        out += [("p", s, None, None, None, None, None) for s in self.path]
        out.append(("u", "alice", None, None, None, None, None))
        return out


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def guard(*rules: Rule, guarded: bool = True) -> SessionGuard:
    policy = Policy(PolicyConfig(rules=list(rules), guarded_connections=["db"] if guarded else []))
    found = policy.for_session(ALICE, "db")
    assert found is not None
    return found


READS = Rule(name="reads", effect="allow", match=Match(kinds=["read"]))
BUMP = Rule(
    name="bump", effect="allow", match=Match(kinds=["read"], volatile_functions=["app.bump"])
)
DDL = Rule(name="ddl", effect="allow", match=Match(kinds=["ddl"]))
UTILITY = Rule(name="set", effect="allow", match=Match(kinds=["utility", "read"]))


def check(catalog: Catalog | None = None, clock: Clock | None = None) -> FunctionCheck:
    return FunctionCheck((catalog or Catalog()).ask, clock or Clock())


@pytest.mark.parametrize(
    ("sql", "allowed"),
    [
        ("select app.bump()", False),
        ("select bump()", False),  # app is on the search path
        ("select * from t where id = app.bump()", False),
        ("select app.report()", False),  # STABLE, but an untrusted language
        ("select pg_temp.tmp()", False),
        ("select lower('X')", True),
        ("select app.pure(1), now(), random()", True),
        ("select other.nothing()", True),  # no such function: the server will say so
        ("select bump2()", True),  # other is not on the search path
        ("select tmp()", True),  # temporary functions are only found qualified
    ],
)
async def test_a_volatile_user_function_is_a_write(sql: str, allowed: bool) -> None:
    decision = await check().check(guard(READS), sql)
    assert decision.allowed is allowed, decision.reason
    if not allowed:
        assert "kind=write" in decision.reason
        assert "volatile_functions=" in decision.reason


async def test_a_rule_that_names_the_function_allows_it() -> None:
    g = guard(BUMP)
    c = check()
    assert (await c.check(g, "select app.bump()")).allowed
    assert (await c.check(g, "select bump() from t")).allowed
    decision = await c.check(g, "select app.bump(), app.cleanup()")
    assert not decision.allowed
    assert "app.cleanup" in decision.reason
    # by name in any schema
    anywhere = Rule(
        name="b", effect="allow", match=Match(kinds=["read"], volatile_functions=["bump*"])
    )
    assert (await check().check(guard(anywhere), "select other.bump2()")).allowed


async def test_a_procedure_is_looked_up_like_a_function() -> None:
    decision = await check().check(guard(UTILITY), "call app.cleanup()")
    assert not decision.allowed
    assert "kind=write+utility" in decision.reason


async def test_a_rule_denying_writes_denies_a_volatile_call_on_any_connection() -> None:
    deny = Rule(name="no-writes", effect="deny", match=Match(kinds=["write"]))
    decision = await check().check(guard(deny, guarded=False), "select app.bump()")
    assert not decision.allowed
    assert decision.rules == ("no-writes",)


async def test_volatile_functions_go_with_allow_rules_only() -> None:
    with pytest.raises(ValidationError, match="volatile_functions"):
        Rule(name="x", effect="deny", match=Match(volatile_functions=["app.bump"]))


async def test_the_catalog_is_asked_only_when_it_matters_and_once_per_name() -> None:
    catalog, clock = Catalog(), Clock()
    c = check(catalog, clock)
    g = guard(READS)
    assert (await c.check(g, "select 1 from t")).allowed  # calls nothing
    assert (await c.check(g, "delete from t where id = lower('x')")).effect == "deny"  # anyway
    assert catalog.asked == []
    assert (await c.check(g, "select lower('x')")).allowed
    assert (await c.check(g, "select lower(a) from t")).allowed
    assert len(catalog.asked) == 1
    # A guard that could not deny a write anyway asks nothing.
    tables = Rule(name="no-secrets", effect="deny", match=Match(tables=["secrets"]))
    assert (await c.check(guard(tables, guarded=False), "select app.bump()")).allowed
    assert len(catalog.asked) == 1
    clock.now += CACHE_TTL + 1  # another session may have changed it meanwhile
    assert (await c.check(g, "select lower('x')")).allowed
    assert len(catalog.asked) == 2


async def test_ddl_in_the_session_forgets_what_the_catalog_said() -> None:
    catalog = Catalog()
    c = check(catalog)
    g = guard(READS, DDL)
    assert (await c.check(g, "select app.pure(1)")).allowed
    assert (await c.check(g, "alter function app.pure(int) volatile")).allowed
    catalog.rows = [r for r in catalog.rows if r[2] != "pure"] + [fn("app", "pure", "v", "sql")]
    decision = await c.check(g, "select app.pure(1)")
    assert not decision.allowed
    assert "app.pure" in decision.reason
    assert len(catalog.asked) == 2


async def test_a_call_after_ddl_in_the_same_string_is_taken_as_a_write() -> None:
    c = check()
    sql = "alter function app.pure(int) volatile; select app.pure(1)"
    decision = await c.check(guard(READS, DDL), sql)
    assert not decision.allowed
    assert decision.reason.startswith("statement 2 of 2")


async def test_set_search_path_widens_where_unqualified_names_are_found() -> None:
    catalog = Catalog()
    c = check(catalog)
    g = guard(READS, UTILITY)
    assert (await c.check(g, "select bump2()")).allowed
    assert (await c.check(g, "set search_path = other, public")).allowed
    assert not (await c.check(g, "select bump2()")).allowed
    c2 = check(Catalog())
    assert (await c2.check(g, "select set_config('search_path', 'x,other', false)")).allowed
    assert not (await c2.check(g, "select bump2()")).allowed
    c3 = check(Catalog())
    assert (await c3.check(g, "select set_config('search_path', current_user, false)")).allowed
    assert not (await c3.check(g, "select bump2()")).allowed  # unreadable: any schema


async def test_a_failed_lookup_refuses_the_statement() -> None:
    catalog = Catalog()
    catalog.fail = "no agent of pool 'default' is connected"
    decision = await check(catalog).check(guard(READS), "select lower('x')")
    assert not decision.allowed
    assert "cannot be looked up" in decision.reason
    assert "no agent" in decision.reason


def test_the_lookup_query_carries_names_hex_encoded() -> None:
    sql = lookup_sql({"bump", "x'; drop table t; --"})
    assert "drop table" not in sql
    assert bytes("x'; drop table t; --", "utf-8").hex() in sql
    assert statement_facts(sql)[0].kinds == ("read",)


def test_parse_answer_and_what_writes() -> None:
    answer = parse_answer([fn("app", "bump", "v"), ("p", "public", None, None, None, None, None)])
    assert answer.functions == (FunctionInfo("app", "bump", "v", "plpgsql", True, False),)
    assert answer.path == ("public",)
    assert answer.functions[0].writes
    assert not FunctionInfo("ext", "digest", "i", "c", False, False).writes
    assert FunctionInfo("ext", "gen_random_bytes", "v", "c", False, False).writes
    assert not FunctionInfo("pg_catalog", "random", "v", "internal", False, True).writes
    # As the server sends them: boolean::text is 'true'/'false'.
    server = parse_answer([("f", "app", "pure", "i", "sql", "true", "false")])
    assert server.functions == (FunctionInfo("app", "pure", "i", "sql", True, False),)
    assert not server.functions[0].writes
    builtin = parse_answer([("f", "pg_catalog", "random", "v", "internal", "false", "true")])
    assert not builtin.functions[0].writes


async def test_settings_and_reads_keep_the_cache_and_ddl_drops_it() -> None:
    catalog = Catalog()
    c = check(catalog)
    g = guard(READS, UTILITY, DDL)
    assert (await c.check(g, "select app.pure(1)")).allowed
    assert (await c.check(g, "set statement_timeout = '5s'")).allowed
    assert (await c.check(g, "select app.pure(2)")).allowed
    assert len(catalog.asked) == 1
    assert (await c.check(g, "create schema app2")).allowed
    assert (await c.check(g, "select app.pure(2)")).allowed
    assert len(catalog.asked) == 2


async def test_a_setting_earlier_in_the_string_is_followed_not_feared() -> None:
    g = guard(READS, UTILITY)
    c = check()
    assert (await c.check(g, "set statement_timeout = '1s'; select lower('x')")).allowed
    decision = await c.check(g, "set search_path = other; select bump2()")
    assert not decision.allowed
    assert "other.bump2" in decision.reason
