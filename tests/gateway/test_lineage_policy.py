"""Inference refusals (gateway.policy.lineage) and the session's check with its catalog cache
(gateway.policy.lineage_check), with the catalog answered from memory in the rows the
server's catalog query returns."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence

import pytest

from gateway.policy.functions import LookupFailed
from gateway.policy.lineage import ColumnRules, source_matches
from gateway.policy.lineage_check import LineageCheck
from gateway.policy.masking import MaskingRuleConfig
from shared.lineage import ANY, Function, MemoryCatalog, Relation, Source, analyze
from shared.lineage.catalog import CACHE_TTL

CATALOG = (
    MemoryCatalog()
    .add(Relation("public", "accounts", ("id", "card", "email")))
    .add(Relation("public", "orders", ("id", "card_used", "email_used", "note")))
    .add(Relation("public", "visa", ("id",), "SELECT id FROM accounts WHERE card LIKE '4%'"))
    .add_function(Function("pg_catalog", "left", "internal", True))
)


def rules(*configs: Mapping[str, object]) -> ColumnRules:
    return ColumnRules.of(MaskingRuleConfig.model_validate(c) for c in configs)


CARDS: dict[str, object] = {"name": "cards", "columns": ["accounts.card", "card_used"]}
EMAILS: dict[str, object] = {"name": "emails", "columns": ["*email*"], "strategy": "token"}


def reasons(column_rules: ColumnRules, sql: str) -> list[str]:
    return [r.reason for r in column_rules.refusals(analyze(sql, CATALOG))]


@pytest.mark.parametrize(
    ("pattern", "source", "matches"),
    [
        ("card", Source("public", "accounts", "card"), True),
        ("accounts.card", Source("public", "accounts", "card"), True),
        ("public.accounts.card", Source("public", "accounts", "card"), True),
        ("other.accounts.card", Source("public", "accounts", "card"), False),
        ("orders.card", Source("public", "accounts", "card"), False),
        ("*card*", Source("public", "orders", "card_used"), True),
        ("accounts.card", Source(ANY, "accounts", ANY), True),  # unresolved: fail closed
        ("accounts.card", Source(ANY, ANY, ANY), True),
    ],
)
def test_sources_match_rules_as_result_columns_do(
    pattern: str, source: Source, matches: bool
) -> None:
    assert source_matches(pattern, source) is matches


def test_a_masked_column_in_a_clause_is_refused_naming_it_and_the_clause() -> None:
    (reason,) = reasons(rules(CARDS), "SELECT id FROM accounts WHERE card LIKE '4%'")
    assert reason == (
        "policy: masked column accounts.card (rule 'cards') is used in WHERE "
        "(card LIKE '4%'), which would reveal its values; select it (masked) instead of "
        "filtering, joining, grouping or ordering on it"
    )
    assert reasons(rules(CARDS), "SELECT card FROM accounts WHERE id = 1") == []
    assert reasons(rules(), "SELECT id FROM accounts ORDER BY card") == []


def test_lookups_pass_only_where_the_rule_allows_them() -> None:
    lookups = [
        "SELECT id FROM accounts WHERE card = $1",
        "SELECT id FROM accounts WHERE card IN ('1', $1)",
        "SELECT id FROM accounts WHERE card IS NULL",
    ]
    allowing = rules({**CARDS, "allow_lookup": True})
    for sql in lookups:
        assert len(reasons(rules(CARDS), sql)) == 1, sql
        assert reasons(allowing, sql) == [], sql
    assert len(reasons(allowing, "SELECT id FROM accounts WHERE card >= $1")) == 1
    assert len(reasons(allowing, "SELECT id FROM accounts WHERE left(card, 1) = $1")) == 1


def test_a_use_must_be_allowed_by_every_rule_on_its_column() -> None:
    both = rules({**CARDS, "allow_lookup": True}, {"name": "strict", "columns": ["card"]})
    (reason,) = reasons(both, "SELECT id FROM accounts WHERE card = $1")
    assert "(rule 'strict')" in reason


def test_token_rules_keep_join_keys_between_masked_columns_and_plain_grouping() -> None:
    tokens = rules(EMAILS)
    join = "SELECT 1 FROM accounts a JOIN orders o ON o.email_used = a.email"
    assert reasons(tokens, join) == []
    assert reasons(tokens, "SELECT email, count(*) FROM accounts GROUP BY email") == []
    # joined with a column the reader sees in clear: the tokens no longer hide the value
    assert len(reasons(tokens, "SELECT 1 FROM accounts a JOIN orders o ON o.note = a.email")) == 1
    assert len(reasons(tokens, "SELECT id FROM accounts ORDER BY email")) == 1
    # redact rules keep none of that
    assert (
        len(reasons(rules(CARDS), "SELECT 1 FROM accounts a JOIN orders o ON o.card_used = a.card"))
        == 2
    )


def test_clauses_inside_views_and_on_unresolved_relations_are_refused() -> None:
    (reason,) = reasons(rules(CARDS), "SELECT * FROM visa")
    assert "masked column accounts.card (rule 'cards') is used in WHERE" in reason
    (reason,) = reasons(rules(CARDS), "SELECT 1 FROM nowhere WHERE x > 1")
    assert reason.startswith("policy: WHERE (x > 1) reads nowhere.*, which lineage cannot resolve")


# ---- the session's check with its catalog ------------------------------------------------

_PAIR = re.compile(
    r"\((NULL::text|convert_from\(decode\('([0-9a-f]*)', 'hex'\), 'UTF8'\)), "
    r"convert_from\(decode\('([0-9a-f]*)', 'hex'\), 'UTF8'\)\)"
)


def _keys(part: str) -> list[tuple[str | None, str]]:
    return [
        (
            None if m.group(1) == "NULL::text" else bytes.fromhex(m.group(2)).decode(),
            bytes.fromhex(m.group(3)).decode(),
        )
        for m in _PAIR.finditer(part)
    ]


class FakeServer:
    """Answers `lookup_sql` from a MemoryCatalog, as the server's catalog would."""

    def __init__(self, catalog: MemoryCatalog) -> None:
        self.catalog = catalog
        self.asked: list[str] = []
        self.down = False

    async def ask(self, sql: str) -> Sequence[Sequence[str | None]]:
        if self.down:
            raise LookupFailed("no agent serves this connection")
        self.asked.append(sql)
        rows: list[tuple[str | None, ...]] = []
        for part in sql.split(" UNION ALL "):
            anywhere = "c.relname::text = q.n" in part  # any_path: every schema
            for schema, name in _keys(part):
                if part.startswith("SELECT 'r'"):
                    found = [
                        r
                        for (s, n), r in self.catalog.relations.items()
                        if n == name and (s == schema if schema else anywhere)
                    ]
                    if not (anywhere and not schema):
                        r = self.catalog.relation(schema, name)
                        found = [r] if r else []
                    rows += [
                        ("r", schema, name, r.schema, r.name, json.dumps(r.columns), r.definition)
                        for r in found
                    ] or [("r", schema, name, None, None, None, None)]
                else:
                    for f in self.catalog.functions(schema, name) or ():
                        rows.append(
                            (
                                "f",
                                schema,
                                name,
                                f.schema,
                                f.language,
                                str(f.builtin).lower(),
                                f.body,
                            )
                        )
        return rows


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_the_catalog_is_asked_once_per_name_and_shapes_are_cached() -> None:
    server, clock = FakeServer(CATALOG), Clock()
    check = LineageCheck(server.ask, clock)
    verdict = await check.check(rules(CARDS), "SELECT id FROM visa WHERE id = 1")
    assert verdict.refusal is not None and "used in WHERE" in verdict.refusal
    assert verdict.rules == ("cards",)
    assert len(server.asked) == 2  # visa, then what its definition reads (accounts)
    assert (await check.check(rules(CARDS), "SELECT id FROM visa WHERE id = 2")).refusal
    assert (await check.check(rules(CARDS), "SELECT id FROM accounts WHERE id = 3")).refusal is None
    assert len(server.asked) == 2  # same shape, then names it holds: nothing asked
    clock.now += CACHE_TTL + 1
    assert (await check.check(rules(CARDS), "SELECT id FROM accounts WHERE id = 3")).refusal is None
    assert len(server.asked) == 3  # older than CACHE_TTL: asked again


async def test_sessions_without_column_rules_ask_nothing() -> None:
    server = FakeServer(CATALOG)
    check = LineageCheck(server.ask, Clock())
    detectors = ColumnRules.of([MaskingRuleConfig(name="scan", detectors=["card"])])
    assert (await check.check(detectors, "SELECT * FROM accounts ORDER BY card")).refusal is None
    assert server.asked == []


async def test_a_catalog_that_cannot_be_read_refuses_the_statement() -> None:
    server = FakeServer(CATALOG)
    server.down = True
    verdict = await LineageCheck(server.ask, Clock()).check(rules(CARDS), "SELECT 1 FROM accounts")
    assert verdict.refusal == (
        "policy: the catalog cannot be read to check this statement against the masking rules "
        "(no agent serves this connection); it is refused"
    )


async def test_ddl_drops_the_cache_and_cannot_hide_a_view_in_the_same_string() -> None:
    catalog = MemoryCatalog().add(Relation("public", "accounts", ("id", "card")))
    server = FakeServer(catalog)
    check = LineageCheck(server.ask, Clock())
    sneaky = "CREATE VIEW v AS SELECT id FROM accounts WHERE card LIKE '4%'; SELECT * FROM v"
    verdict = await check.check(rules(CARDS), sneaky)
    assert verdict.refusal is not None and "after DDL or a search_path change" in verdict.refusal
    assert (await check.check(rules(CARDS), "CREATE TABLE t (x int)")).refusal is None
    asked = len(server.asked)
    catalog.add(Relation("public", "v", ("id",), "SELECT id FROM accounts WHERE card LIKE '4%'"))
    verdict = await check.check(rules(CARDS), "SELECT * FROM v")
    assert verdict.refusal is not None and "used in WHERE" in verdict.refusal
    assert len(server.asked) > asked  # the DDL dropped what the session held


async def test_after_a_search_path_change_unqualified_names_may_be_in_any_schema() -> None:
    catalog = (
        MemoryCatalog()
        .add(Relation("public", "accounts", ("id", "card")))
        .add(Relation("archive", "accounts", ("id", "card", "pan")))
    )
    server = FakeServer(catalog)
    check = LineageCheck(server.ask, Clock())
    archived = rules({"name": "archive", "columns": ["archive.accounts.card"]})
    probe = "SELECT id FROM accounts WHERE card LIKE '4%'"
    assert (await check.check(archived, probe)).refusal is None  # public.accounts
    assert (await check.check(archived, "SET search_path TO archive, public")).refusal is None
    verdict = await check.check(archived, probe)  # either accounts, now
    assert verdict.refusal is not None
    assert "masked column accounts.card (rule 'archive') is used in WHERE" in verdict.refusal
    assert "c.relname::text = q.n" in server.asked[-1]


def test_copies_of_masked_columns_go_only_into_columns_the_same_rules_mask() -> None:
    def copies(sql: str) -> list[str]:
        return [r.reason for r in rules(CARDS).write_refusals(analyze(sql, CATALOG))]

    (reason,) = copies("CREATE TABLE leak AS SELECT reverse(card) AS r FROM accounts")
    assert reason == (
        "policy: this statement copies masked column accounts.card (rule 'cards') into "
        "leak.r, which the rule does not mask; masked data may not be copied"
    )
    assert len(copies("SELECT card INTO leak FROM accounts")) == 1
    assert len(copies("UPDATE orders SET note = card_used")) == 1
    assert copies("INSERT INTO orders (card_used) SELECT card FROM accounts") == []
    assert copies("UPDATE accounts SET card = upper(card)") == []
    assert copies("INSERT INTO orders (note) SELECT email FROM accounts") == []
    (reason,) = copies("COPY (SELECT left(card, 6) FROM accounts) TO '/tmp/x'")
    assert "into server file /tmp/x, where no rule masks it" in reason
    assert len(copies("COPY accounts TO PROGRAM 'cat'")) == 1
    assert copies("COPY accounts (id) TO '/tmp/x'") == []
