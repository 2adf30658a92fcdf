"""A session's inference check: lineage of each statement, with the server's catalog behind it.

Sans-I/O apart from one awaited callable (`ask`: run a catalog query on a side connection
of the session, `gateway.protocols.pgfunctions.query`). The rules:

1. Only sessions with column masking rules are checked (`ColumnRules`); others cost nothing.
2. The catalog (relations with their columns and view definitions, functions with their
   language and SQL bodies) is asked for the names a statement needs and the session does
   not hold yet, in one query per round; what it answered is cached per session for
   CACHE_TTL seconds, and dropped at once after a statement that may change it (DDL, DO,
   dynamic SQL). Views and function bodies name more relations: up to MAX_ROUNDS rounds.
3. A statement's lineage is cached per statement shape (its text with constants replaced by
   parameters, as the facts cache does), for the catalog's current generation: a shape is
   analysed once until the catalog changes.
4. Fail closed: when the catalog cannot be asked, the statement is refused, saying why; a
   statement after DDL in the same query string that reads a relation the catalog does not
   know yet is refused (send them separately).
5. Unqualified names resolve through the session's default search_path (the side
   connection logs in as the session does) until the session changes what names may mean
   (SET search_path, set_config, SET ROLE, DDL such as a temporary table, DO): from then on
   an unqualified relation is every relation of that name in any schema (their columns
   together, its schema unknown, so schema-qualified rules match it; one of them a view:
   not followed), and an unqualified function every function of that name.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pglast import parse_sql
from pglast.parser import normalize

from gateway.policy.facts import Facts, UnparsableSQL, statement_facts
from gateway.policy.functions import LookupFailed
from gateway.policy.lineage import ClauseRefusal, ColumnRules
from gateway.policy.masking import MaskingRuleConfig
from shared.lineage import Lineage, analyze_statement
from shared.lineage.catalog import CACHE_TTL, SessionCatalog, lookup_sql

log = logging.getLogger(__name__)

MAX_ROUNDS = 4  # catalog lookups per statement (views and functions name more relations)
MAX_SHAPES = 512  # lineages kept per session
MAX_TEXT = 4096  # longer statements are analysed each time, not cached


def _changes(facts: Facts) -> bool:
    """The statement may change what names resolve to: DDL, DO or dynamic SQL, a search_path
    or role change."""
    return (
        "ddl" in facts.kinds
        or facts.opaque
        or bool(facts.search_path)
        or "identity_change" in facts.flags
    )


def _summary(lineages: Sequence[Lineage]) -> object:
    return [
        (
            frozenset(lineage.uses),
            tuple(c.sources for c in lineage.columns),
            lineage.unresolved,
        )
        for lineage in lineages
    ]


@dataclass(frozen=True, slots=True)
class _Shape:
    generation: int  # the catalog's, when analysed
    at: float
    lineages: tuple[Lineage, ...]
    changes: tuple[bool, ...]


@dataclass(frozen=True, slots=True)
class Verdict:
    """None refusal: allowed. `lineages` for callers that show them."""

    refusal: str | None
    rules: tuple[str, ...] = ()
    lineages: tuple[Lineage, ...] = ()


class LineageCheck:
    """One session's inference check (rules 1 to 4). `ask` runs a catalog query and returns
    its rows in text format, raising `LookupFailed` when it cannot."""

    def __init__(
        self,
        ask: Callable[[str], Awaitable[Sequence[Sequence[str | None]]]],
        clock: Callable[[], float],
    ) -> None:
        self._ask = ask
        self.catalog = SessionCatalog(clock)
        self._clock = clock
        self._shapes: dict[str, _Shape] = {}
        self._masking: tuple[MaskingRuleConfig, ...] = ()
        self._rules = ColumnRules()

    def rules(self, masking: tuple[MaskingRuleConfig, ...]) -> ColumnRules:
        """The session's `ColumnRules` for these masking rules, kept while they stay the
        same (the rules of one policy version), with what they matched."""
        if self._masking is not masking:
            self._masking, self._rules = masking, ColumnRules.of(masking)
        return self._rules

    async def check(self, rules: ColumnRules, sql: str) -> Verdict:
        if rules.empty:
            return Verdict(None)
        try:
            lineages, changes = await self.lineages(sql)
        except UnparsableSQL as exc:
            return Verdict(f"policy: {exc}; with column masking rules it is refused")
        except LookupFailed as exc:
            return Verdict(
                "policy: the catalog cannot be read to check this statement against the "
                f"masking rules ({exc}); it is refused"
            )
        except Exception as exc:  # a bug here must not let the statement through
            log.exception("lineage of a statement failed")
            return Verdict(
                f"policy: the lineage of this statement could not be followed ({exc!r}); "
                "with column masking rules it is refused"
            )
        refused = rules.refusals(lineages)
        if refused:
            return _refused(refused, lineages)
        copies = rules.write_refusals(lineages)
        if copies:
            names = tuple(dict.fromkeys(c.rule for c in copies))
            return Verdict(copies[0].reason, names, tuple(lineages))
        for i, lineage in enumerate(lineages):
            if any(changes[:i]) and lineage.unresolved:
                return Verdict(
                    "policy: a statement reads what the catalog does not know yet, after DDL "
                    "or a search_path change in the same query string; send that first, "
                    "on its own",
                    lineages=tuple(lineages),
                )
        if any(changes):
            self.catalog.clear()  # what it creates or drops: asked again next time
        return Verdict(None, lineages=tuple(lineages))

    async def lineages(self, sql: str) -> tuple[tuple[Lineage, ...], tuple[bool, ...]]:
        """Each statement's lineage, the catalog asked for what it lacks (rules 2 and 3), and
        whether each statement may change the catalog (DDL, DO, dynamic SQL)."""
        shape = self._shape(sql)
        if shape is not None:
            cached = self._shapes.get(shape)
            if (
                cached is not None
                and cached.generation == self.catalog.generation
                and self._clock() - cached.at <= CACHE_TTL
            ):
                return cached.lineages, cached.changes
        changes = tuple(_changes(f) for f in statement_facts(sql))
        if any(changes) and not self.catalog.any_path:
            # From now on an unqualified name may be anywhere (rule 5): what the catalog
            # said under the default search path no longer stands.
            self.catalog.any_path = True
            self.catalog.clear()
        statements = [raw.stmt for raw in parse_sql(sql)]
        lineages = await self._analyse(statements)
        if shape is not None:
            if shape != sql:
                try:
                    parsed = parse_sql(shape)
                except Exception:  # a constant where the grammar takes no parameter
                    return lineages, changes
                generic = await self._analyse([raw.stmt for raw in parsed])
                if _summary(generic) != _summary(lineages):
                    return lineages, changes  # the constants matter: never reuse this shape
            if len(self._shapes) >= MAX_SHAPES:
                del self._shapes[next(iter(self._shapes))]
            self._shapes[shape] = _Shape(self.catalog.generation, self._clock(), lineages, changes)
        return lineages, changes

    async def _analyse(self, statements: list[Any]) -> tuple[Lineage, ...]:
        catalog = self.catalog
        for _ in range(MAX_ROUNDS):
            lineages = tuple(analyze_statement(s, catalog) for s in statements)
            if not catalog.wanting:
                return lineages
            relations, functions = catalog.take_wanted()
            rows = await self._ask(lookup_sql(relations, functions, any_path=catalog.any_path))
            catalog.learn(rows, relations, functions)
        lineages = tuple(analyze_statement(s, catalog) for s in statements)
        catalog.take_wanted()  # still wanting: the unresolved parts fail closed
        return lineages

    @staticmethod
    def _shape(sql: str) -> str | None:
        if len(sql) > MAX_TEXT:
            return None
        try:
            return str(normalize(sql))
        except Exception:
            return None


def _refused(refused: list[ClauseRefusal], lineages: Sequence[Lineage]) -> Verdict:
    first = refused[0]
    rules = tuple(dict.fromkeys(r.rule for r in refused))
    return Verdict(first.reason, rules, tuple(lineages))
