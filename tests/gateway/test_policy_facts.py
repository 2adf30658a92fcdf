"""Statement facts: kinds, tables, functions and flags read off PostgreSQL's parse tree."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.policy.facts import Facts, UnparsableSQL, statement_facts


def one(sql: str) -> Facts:
    facts = statement_facts(sql)
    assert len(facts) == 1, facts
    return facts[0]


@pytest.mark.parametrize(
    ("sql", "kinds"),
    [
        ("select 1", ("read",)),
        ("table notes", ("read",)),
        ("show search_path", ("read",)),
        ("explain select 1", ("read",)),
        ("copy notes to stdout", ("read",)),
        ("insert into notes values (1)", ("write",)),
        ("update notes set a = 1 where id = 2", ("write",)),
        ("merge into t using s on t.id = s.id when matched then delete", ("write",)),
        ("copy notes from stdin", ("write",)),
        ("truncate notes", ("write",)),
        (
            "with d as (delete from notes where id = 1 returning *) select * from d",
            ("write", "read"),
        ),
        ("select * into copy_of from notes", ("write", "ddl", "read")),
        ("create table t (id int)", ("ddl",)),
        ("create table t2 as select * from notes", ("write", "ddl")),
        ("alter table notes add column x int", ("ddl",)),
        ("drop table notes", ("ddl",)),
        ("create index on notes (id)", ("ddl",)),
        ("grant select on notes to bob", ("dcl",)),
        ("revoke all on notes from bob", ("dcl",)),
        ("create role eve login", ("dcl",)),
        ("alter role eve superuser", ("dcl",)),
        ("begin", ("transaction",)),
        ("commit", ("transaction",)),
        ("set search_path = app", ("utility",)),
        ("vacuum notes", ("utility",)),
        ("do $$ begin null; end $$", ("utility",)),
        ("prepare p as delete from notes where id = $1", ("write",)),
        ("explain analyze delete from notes where id = 1", ("write",)),
    ],
)
def test_kinds(sql: str, kinds: tuple[str, ...]) -> None:
    assert one(sql).kinds == kinds


def test_tables_are_schema_qualified_where_given_and_found_anywhere() -> None:
    facts = one(
        "with x as (select * from app.orders) "
        "select * from x join customers c on true where c.id in (select id from audit.log)"
    )
    assert {"app.orders", "customers", "audit.log"} <= facts.tables
    assert one('select * from "Mixed"."Case"').tables == {"Mixed.Case"}
    assert one("drop table app.secrets, other").tables == {"app.secrets", "other"}
    assert one("truncate a, b").tables == {"a", "b"}
    assert one("lock table secrets").tables == {"secrets"}


def test_functions_are_found_in_any_position_and_by_unqualified_name() -> None:
    facts = one("select lower(a), pg_catalog.upper(b) from t where length(c) > coalesce(d, 1)")
    assert {"lower", "upper", "length"} <= facts.functions
    assert one("select * from generate_series(1, 3)").functions == {"generate_series"}
    assert one("call my_proc(1)").functions == {"my_proc"}


@pytest.mark.parametrize(
    ("sql", "flag"),
    [
        ("copy t to program 'id'", "program"),
        ("copy t from program 'id'", "program"),
        ("copy t to '/tmp/x'", "server_files"),
        ("copy t from '/etc/passwd'", "server_files"),
        ("select pg_read_file('/etc/passwd')", "server_files"),
        ("select * from pg_ls_dir('.')", "server_files"),
        ("select lo_import('/etc/passwd')", "server_files"),
        ("select lo_export(1, '/tmp/x')", "server_files"),
        ("select * from dblink('host=x', 'select 1') as t(a int)", "remote"),
        ("do $$ begin null; end $$", "dynamic_sql"),
        ("create function f() returns int language sql as 'select 1'", "dynamic_sql"),
        ("select query_to_xml('delete from t', true, true, '')", "dynamic_sql"),
        ("create extension dblink", "dynamic_sql"),
        ("set role postgres", "identity_change"),
        ("set session authorization postgres", "identity_change"),
        ("set local role postgres", "identity_change"),
        ("set session_replication_role = replica", "identity_change"),
        ("select set_config('role', 'postgres', false)", "identity_change"),
        ("alter system set log_statement = 'none'", "server_config"),
        ("load 'auto_explain'", "server_config"),
        ("select pg_terminate_backend(1)", "server_admin"),
        ("grant all on t to bob", "privilege_change"),
        ("alter table t owner to bob", "privilege_change"),
        ("update t set a = 1", "where_less_write"),
        ("delete from t", "where_less_write"),
        ("delete from t where true", "where_less_write"),
        ("delete from t where 1 = 1", "where_less_write"),
        ("update t set a = 1 where $1", "where_less_write"),
        ("truncate t", "where_less_write"),
        ("with d as (delete from t returning *) select 1", "where_less_write"),
        ("select * from t for update", "row_lock"),
    ],
)
def test_flags(sql: str, flag: str) -> None:
    flags = one(sql).flags
    assert flag in flags
    outside = flag not in ("privilege_change", "where_less_write", "row_lock")
    assert ("outside_data" in flags) is outside


@pytest.mark.parametrize(
    "sql",
    [
        "select 1",
        "update t set a = 1 where id = 2",
        "delete from t where id in (select id from u)",
        "set search_path = app",
        "reset role",
        "copy t to stdout",
        "select lower('x')",
        "select pg_catalog.set_config('search_path', '', false)",
    ],
)
def test_ordinary_statements_carry_no_outside_flags(sql: str) -> None:
    flags = one(sql).flags
    assert not flags & {"outside_data", "where_less_write"}


def test_opaque_statements() -> None:
    assert one("do $$ begin delete from secrets; end $$").opaque
    assert one("select query_to_xml('select 1', true, true, '')").opaque
    assert not one("select 1").opaque


def test_each_statement_of_a_query_string_has_its_facts() -> None:
    facts = statement_facts("begin; insert into secrets values (1); commit")
    assert [f.index for f in facts] == [1, 2, 3]
    assert [f.kind for f in facts] == ["transaction", "write", "transaction"]
    assert [f.text for f in facts] == ["begin", "insert into secrets values (1)", "commit"]
    assert [f.text for f in statement_facts("select 'é€'; delete from t")] == [
        "select 'é€'",
        "delete from t",
    ]
    assert statement_facts("") == []
    assert statement_facts("-- only a comment") == []


@pytest.mark.parametrize("sql", ["selec 1", "select from where", "select 'unterminated", "\0"])
def test_unparsable_text_raises(sql: str) -> None:
    with pytest.raises(UnparsableSQL):
        statement_facts(sql)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_any_text_gives_facts_or_unparsable(text: str) -> None:
    try:
        facts = statement_facts(text)
    except UnparsableSQL:
        return
    for f in facts:
        assert f.kinds
