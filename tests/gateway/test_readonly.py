"""The read-only classifier: a table of statements that pass and of bypass attempts."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.policy.readonly import DENIED_FUNCTIONS, Verdict, check_read_only

ALLOWED = [
    "select 1",
    "SELECT * FROM notes WHERE id = $1",
    "select count(*) from notes; select now()",
    "values (1), (2)",
    "table notes",
    "with t as (select 1 as x) select x from t",
    "with recursive t(n) as (select 1 union all select n + 1 from t where n < 5) select * from t",
    "select * from notes n join other o on o.id = n.id where exists (select 1 from x)",
    "select lower(body), coalesce(a, b), current_user, version() from notes",
    "show search_path",
    "show all",
    "explain select * from notes",
    "explain (analyze, buffers) select * from notes",
    "begin",
    "begin read only",
    "start transaction isolation level repeatable read, read only",
    "begin isolation level serializable",
    "commit",
    "rollback",
    "savepoint s1",
    "release savepoint s1",
    "rollback to savepoint s1",
    "set transaction read only",
    "set search_path to public, app",
    "set statement_timeout = '5s'",
    "set local work_mem = '64MB'",
    "set application_name = 'report'",
    "set default_transaction_read_only = on",
    "reset all",
    "reset role",
    "reset search_path",
    "declare c cursor for select * from notes",
    "fetch 10 from c",
    "move next in c",
    "close c",
    "prepare p (int) as select * from notes where id = $1",
    "deallocate p",
    "deallocate all",
    "listen events",
    "unlisten *",
    "discard all",
    "copy notes to stdout",
    "copy (select * from notes) to stdout with (format csv)",
    "",
    "-- only a comment",
    ";",
]

# (statement, words the refusal must contain)
REFUSED = [
    ("insert into notes (body) values ('x')", "INSERT writes data"),
    ("update notes set body = 'x'", "UPDATE writes data"),
    ("delete from notes", "DELETE writes data"),
    ("merge into t using s on t.id = s.id when matched then delete", "MERGE writes data"),
    ("truncate notes", "TRUNCATE writes data"),
    ("select 1; delete from notes", "statement 2 of 2: DELETE"),
    ("select 1; select 2; drop table notes", "statement 3 of 3: DROP"),
    ("with gone as (delete from notes returning *) select * from gone", "contains DELETE"),
    (
        "with x as (select 1), y as (insert into notes(body) values ('a') returning id) "
        "select * from y",
        "contains INSERT",
    ),
    ("with u as (update notes set body = '' returning 1) select 1", "contains UPDATE"),
    ("select * from notes for update", "FOR UPDATE/SHARE"),
    ("select * from notes for no key update", "FOR UPDATE/SHARE"),
    ("select * from notes for share", "FOR UPDATE/SHARE"),
    ("select * from notes for key share nowait", "FOR UPDATE/SHARE"),
    ("select * from (select * from notes for update) s", "FOR UPDATE/SHARE"),
    ("declare c cursor for select * from notes for update", "FOR UPDATE/SHARE"),
    ("select * into backup from notes", "SELECT INTO"),
    ("select 1 into temp t", "SELECT INTO"),
    ("create table t as select * from notes", "CREATE TABLE AS"),
    ("create table t (id int)", "CREATE TABLE changes the schema"),
    ("create temp table t (id int)", "CREATE TABLE"),
    ("create view v as select 1", "CREATE VIEW"),
    ("create index on notes (body)", "CREATE INDEX"),
    ("alter table notes add column x int", "ALTER TABLE"),
    ("drop table notes", "DROP"),
    ("comment on table notes is 'x'", "COMMENT"),
    ("create function f() returns int language sql as 'select 1'", "CREATE FUNCTION"),
    ("create extension dblink", "CREATE EXTENSION"),
    ("grant select on notes to public", "changes privileges"),
    ("revoke select on notes from public", "changes privileges"),
    ("grant admin to app", "changes privileges"),
    ("create role mallory superuser", "changes privileges"),
    ("alter role app superuser", "changes privileges"),
    ("alter default privileges grant all on tables to public", "changes privileges"),
    ("reassign owned by a to b", "changes privileges"),
    ("set role postgres", "SET ROLE"),
    ("set local role postgres", "SET ROLE"),
    ("set role to default", "SET ROLE"),
    ("set session authorization postgres", "SET SESSION AUTHORIZATION"),
    ("set session authorization default", "SET SESSION AUTHORIZATION"),
    ("set session_replication_role = replica", "SESSION REPLICATION ROLE"),
    ("set default_transaction_read_only = off", "would allow writes"),
    ("set default_transaction_read_only to false", "would allow writes"),
    ("set transaction_read_only = 0", "would allow writes"),
    ("set transaction read write", "would allow writes"),
    ("set session characteristics as transaction read write", "would allow writes"),
    ("begin read write", "READ WRITE"),
    ("start transaction read write", "READ WRITE"),
    ("begin isolation level serializable, read write", "READ WRITE"),
    ("prepare transaction 'x'", "two-phase"),
    ("commit prepared 'x'", "two-phase"),
    ("rollback prepared 'x'", "two-phase"),
    ("copy notes from stdin", "COPY ... FROM"),
    ("copy notes from '/etc/passwd'", "COPY ... FROM"),
    ("copy notes from program 'id'", "COPY ... FROM"),
    ("copy notes to '/tmp/out'", "TO a file"),
    ("copy notes to program 'curl evil'", "TO PROGRAM"),
    ("copy (delete from notes returning *) to stdout", "DELETE writes data"),
    ("copy (select pg_read_file('/etc/passwd')) to stdout", "pg_read_file"),
    ("do $$ begin delete from notes; end $$", "DO runs procedural code"),
    ("call cleanup()", "CALL"),
    ("execute p", "EXECUTE p"),
    ("execute p(1, 'x')", "EXECUTE p"),
    ("prepare p as delete from notes", "DELETE writes data"),
    ("explain analyze delete from notes", "DELETE writes data"),
    ("explain (analyze) insert into notes values (1)", "INSERT writes data"),
    ("vacuum notes", "VACUUM/ANALYZE"),
    ("analyze notes", "VACUUM/ANALYZE"),
    ("cluster notes", "CLUSTER"),
    ("reindex table notes", "REINDEX"),
    ("lock table notes", "LOCK"),
    ("notify events, 'x'", "NOTIFY"),
    ("load 'auto_explain'", "LOAD"),
    ("checkpoint", "CHECKPOINT"),
    ("refresh materialized view mv", "REFRESH MATERIALIZED VIEW"),
    ("alter system set fsync = off", "ALTER SYSTEM"),
    ("security label on table notes is 'x'", "SECURITY LABEL"),
    ("import foreign schema s from server x into y", "IMPORT FOREIGN SCHEMA"),
    ("select pg_read_file('/etc/passwd')", "pg_read_file() reads or writes files"),
    ("select pg_catalog.pg_read_binary_file('/etc/passwd')", "pg_read_binary_file"),
    ("select * from pg_ls_dir('.')", "pg_ls_dir"),
    ("select lo_import('/etc/passwd')", "lo_import"),
    ("select lo_export(1234, '/tmp/x')", "lo_export"),
    ("select lo_unlink(1234)", "writes large objects"),
    ("select dblink_exec('host=x', 'delete from notes')", "dblink_exec"),
    ("select * from dblink('host=x', 'select 1') as t(a int)", "dblink"),
    ("select public.dblink_connect('x')", "dblink_connect"),
    ("select query_to_xml('delete from notes returning 1', true, true, '')", "query_to_xml"),
    ("select nextval('notes_id_seq')", "nextval() changes"),
    ("select setval('notes_id_seq', 1)", "setval"),
    ("select set_config('default_transaction_read_only', 'off', false)", "set_config"),
    ("select pg_notify('c', 'x')", "pg_notify"),
    ("select pg_terminate_backend(1)", "pg_terminate_backend"),
    ("select pg_advisory_lock(1)", "pg_advisory_lock"),
    ("select * from notes where id in (select nextval('s'))", "nextval"),
    ("select (select pg_read_file('x')) from notes", "pg_read_file"),
    ("select 1 from notes order by pg_reload_conf()", "pg_reload_conf"),
    ("values (lo_import('/x'))", "lo_import"),
    ("SELECT PG_READ_FILE('/etc/passwd')", "pg_read_file"),
    ("select \"pg_read_file\"('/etc/passwd')", "pg_read_file"),
    ("selec 1", "cannot be parsed"),
    ("select 1; selec 2", "cannot be parsed"),
    ("select 'unterminated", "cannot be parsed"),
    ("delete from notes where id = 1 /* select */", "DELETE"),
    ("/* select 1; */ insert into notes values (1)", "INSERT"),
    ("select 1 \\; insert into notes values (1)", "cannot be parsed"),
]


@pytest.mark.parametrize("sql", ALLOWED)
def test_read_only_statements_pass(sql: str) -> None:
    assert check_read_only(sql) == Verdict(True, "read-only")


@pytest.mark.parametrize(("sql", "why"), REFUSED, ids=[s for s, _ in REFUSED])
def test_writes_ddl_privileges_and_bypasses_are_refused(sql: str, why: str) -> None:
    verdict = check_read_only(sql)
    assert not verdict.allowed
    assert verdict.reason.startswith("read-only access: ")
    assert why in verdict.reason, verdict.reason


def test_the_denied_functions_list_covers_the_documented_families() -> None:
    for name in ("pg_read_file", "lo_import", "lo_export", "dblink", "dblink_exec", "nextval"):
        assert name in DENIED_FUNCTIONS


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_text_never_raises(text: str) -> None:
    verdict = check_read_only(text)
    assert isinstance(verdict.allowed, bool)
    assert verdict.reason


@settings(max_examples=100, deadline=None)
@given(
    st.sampled_from([s for s, _ in REFUSED if "cannot be parsed" not in _]),
    st.sampled_from(["select 1", "show all", "begin", "values (1)"]),
)
def test_a_refused_statement_stays_refused_among_allowed_ones(bad: str, good: str) -> None:
    assert not check_read_only(f"{good}; {bad}").allowed
    assert not check_read_only(f"{bad}; {good}").allowed
