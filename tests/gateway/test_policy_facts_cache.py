"""The facts cache (statements of one shape, new constants) gives what a fresh parse gives."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.policy import facts as facts_module
from gateway.policy.facts import Facts, UnparsableSQL, statement_facts
from tests.gateway.test_policy_bypass import ATTEMPTS, POLICY, WHO


def fresh(sql: str) -> list[Facts]:
    """The facts from a parse of this very text, bypassing the cache."""
    if "\0" in sql:
        raise UnparsableSQL("NUL")  # as statement_facts refuses it, before any parse
    return facts_module._parsed_facts(sql)[0]


def cached_shape(sql: str) -> tuple[Facts, ...] | None:
    shape = facts_module._CACHE._shape_of(sql)
    assert shape is not None
    return facts_module._CACHE._entries.get(shape)


@pytest.mark.parametrize("sql", ATTEMPTS)
def test_a_bypass_attempt_seen_again_is_still_denied_with_the_same_facts(sql: str) -> None:
    first = POLICY.evaluate(WHO, "pg-main", sql)
    again = POLICY.evaluate(WHO, "pg-main", sql)
    assert not again.allowed, (sql, again)
    assert again == first
    try:
        expected = fresh(sql)
    except UnparsableSQL:
        return
    assert statement_facts(sql) == expected


def test_a_shape_seen_once_is_reused_with_the_new_statement_text() -> None:
    statement_facts("select abalance from cache_t1 where aid = 1; select 'a'")
    assert cached_shape("select abalance from cache_t1 where aid = 2; select 'b'") is not None
    facts = statement_facts("select abalance from cache_t1 where aid = 77 ; select 'é€'")
    assert facts == fresh("select abalance from cache_t1 where aid = 77 ; select 'é€'")
    texts = [f.text for f in facts]
    assert texts == ["select abalance from cache_t1 where aid = 77", "select 'é€'"]


def test_facts_read_off_a_constant_are_never_reused() -> None:
    # set_config's first argument decides whether it changes the session's identity.
    role = statement_facts("select set_config('role', 'admin', false)")
    assert "identity_change" in role[0].flags
    assert cached_shape("select set_config('role', 'admin', false)") is None
    path = statement_facts("select set_config('search_path', 'public', false)")
    assert "identity_change" not in path[0].flags


def test_a_shape_that_does_not_parse_or_differs_is_not_reused() -> None:
    facts = fresh("select 1")
    assert facts_module._FactsCache._reusable("select from where $1", facts) is None
    assert facts_module._FactsCache._reusable("select $1 from other", facts) is None
    assert facts_module._FactsCache._reusable("select $1", facts) is not None


def test_the_cache_is_bounded() -> None:
    cache = facts_module._FactsCache()
    for n in range(cache.MAX_ENTRIES + 50):
        cache.facts(f"select c{n} from t where id = 1")
    assert len(cache._entries) == cache.MAX_ENTRIES
    long = "select " + ", ".join(f"c{n}" for n in range(2000)) + " from t"
    assert cache.facts(long) == fresh(long)
    assert len(cache._entries) == cache.MAX_ENTRIES


def quoted(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(
        [
            "select {a} from t where x = {b}",
            "update t set v = {a} where id = {b}",
            "delete from t where {a} = {b}",
            "select set_config({a}, {b}, false)",
            "select pg_read_file({a}) limit {b}",
            "insert into t values ({a}, {b}) returning *",
            "copy (select {a}, {b}) to stdout",
            "select {a}; select {b}",
        ]
    ),
    st.lists(
        st.one_of(
            st.integers(-(10**6), 10**6).map(str),
            st.sampled_from(["'role'", "'search_path'", "true", "null", "1.5", "'x''y'"]),
            st.text(alphabet="abc;'$ -", max_size=6).map(quoted),
        ),
        min_size=4,
        max_size=4,
    ),
)
def test_cached_facts_equal_fresh_facts_for_any_constants(template: str, consts: list[str]) -> None:
    for a, b in (consts[:2], consts[2:]):
        sql = template.format(a=a, b=b)
        try:
            expected = fresh(sql)
        except UnparsableSQL:
            with pytest.raises(UnparsableSQL):
                statement_facts(sql)
            continue
        assert statement_facts(sql) == expected


def test_a_session_guard_reuses_verdicts_but_reports_each_statement_text() -> None:
    guard = POLICY.for_session(WHO, "pg-main")
    assert guard is not None
    first = guard.check("update secrets set v = 1 where id = 1")
    again = guard.check("update secrets set v = 2 where id = 3")
    assert (first.effect, first.reason, first.rules) == (again.effect, again.reason, again.rules)
    assert first.effect == "deny"
    assert [d.facts.text for d in again.statements if d.facts] == [
        "update secrets set v = 2 where id = 3"
    ]
    assert guard.check("select * from secrets where id = 1").allowed
    assert len(guard._verdicts) == 2


TOKENS = ["select", "1", "'a;b'", "$$x;y$$", "--c\n", "/* c; */", ";", "\n", "from", "t"]
TOKENS += ["where", "a", "=", "(", ")", ",", "set_config('role', 'x', false)", "é", "delete"]


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from(TOKENS), max_size=14).map(" ".join))
def test_any_text_seen_twice_gives_the_facts_of_a_fresh_parse(text: str) -> None:
    try:
        expected = fresh(text)
    except UnparsableSQL:
        return
    assert statement_facts(text) == expected
    assert statement_facts(text) == expected
