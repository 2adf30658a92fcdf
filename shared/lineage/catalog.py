"""The server's catalog as lineage needs it, asked over a side connection (sans-I/O).

`SessionCatalog` answers `shared.lineage.Catalog` from what it holds and notes what it
lacks; `lookup_sql` asks for the lacking names in one query (names hex-encoded: no quoting
to get wrong); `learn` takes that query's rows (text format). Answers are trusted for
CACHE_TTL seconds (other sessions may change the catalog) and dropped by `clear` after a
statement of the session that may change it. The gateway's inference check
(`gateway.policy.lineage_check`) and the agent's masking (`shared.masking.planner`) each
keep one per session, asked on their own side connection.

Unqualified names resolve through the session's search_path; with `any_path` (the session
changed what names may mean: SET search_path, SET ROLE, DDL) an unqualified relation is
every relation of that name in any schema, their columns together and its schema unknown
(`ANY`), and an unqualified function every function of that name.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from shared.lineage.model import ANY, Function, Relation

CACHE_TTL = 10.0  # seconds a catalog answer is trusted (changes by other sessions)

Key = tuple[str | None, str]


def _hex(text: str | None) -> str:
    if text is None:
        return "NULL::text"
    return f"convert_from(decode('{text.encode('utf-8').hex()}', 'hex'), 'UTF8')"


def lookup_sql(
    relations: Sequence[Key], functions: Sequence[Key], *, any_path: bool = False
) -> str:
    """One catalog query for these names (hex-encoded: no quoting to get wrong).
    `any_path`: an unqualified name may be in any schema (see the module docstring)."""
    parts: list[str] = []
    if relations:
        values = ", ".join(f"({_hex(s)}, {_hex(n)})" for s, n in relations)
        found = _ANY_RELATION if any_path else _PATH_RELATION
        parts.append(_RELATIONS.replace("VALUES_LIST", values).replace("FOUND", found))
    if functions:
        values = ", ".join(f"({_hex(s)}, {_hex(n)})" for s, n in functions)
        found = "true" if any_path else _PATH_FUNCTION
        parts.append(_FUNCTIONS.replace("VALUES_LIST", values).replace("FOUND", found))
    return " UNION ALL ".join(parts)


_RELATIONS = (
    "SELECT 'r', q.s, q.n, ns.nspname::text, c.relname::text,"
    " (SELECT json_agg(a.attname::text ORDER BY a.attnum) FROM pg_catalog.pg_attribute a"
    " WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped)::text,"
    " CASE WHEN c.relkind IN ('v', 'm') THEN pg_catalog.pg_get_viewdef(c.oid) END, NULL"
    " FROM (VALUES VALUES_LIST) q(s, n)"
    " LEFT JOIN pg_catalog.pg_class c ON CASE WHEN q.s IS NULL THEN FOUND"
    " ELSE c.oid = pg_catalog.to_regclass("
    "pg_catalog.quote_ident(q.s) || '.' || pg_catalog.quote_ident(q.n)) END"
    " LEFT JOIN pg_catalog.pg_namespace ns ON ns.oid = c.relnamespace"
)
_PATH_RELATION = "c.oid = pg_catalog.to_regclass(pg_catalog.quote_ident(q.n))"
_ANY_RELATION = "c.relname::text = q.n AND c.relkind IN ('r', 'p', 'v', 'm', 'f')"
_FUNCTIONS = (
    "SELECT 'f', q.s, q.n, ns.nspname::text, l.lanname::text, (p.oid < 16384)::text,"
    " CASE WHEN l.lanname = 'sql' THEN p.prosrc END, p.proretset::text"
    " FROM (VALUES VALUES_LIST) q(s, n)"
    " LEFT JOIN (pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace ns ON ns.oid = p.pronamespace"
    " JOIN pg_catalog.pg_language l ON l.oid = p.prolang)"
    " ON p.proname::text = q.n AND CASE WHEN q.s IS NULL"
    " THEN FOUND ELSE ns.nspname::text = q.s END"
)
_PATH_FUNCTION = "ns.nspname = ANY (pg_catalog.current_schemas(true))"
_TRUE = frozenset({"t", "true"})


@dataclass
class SessionCatalog:
    """The session's `Catalog` : answers what it holds, notes what it lacks."""

    clock: Callable[[], float]
    relations: dict[Key, tuple[float, Relation | None]] = field(default_factory=dict)
    functions_by_name: dict[Key, tuple[float, tuple[Function, ...]]] = field(default_factory=dict)
    wanted_relations: set[Key] = field(default_factory=set)
    wanted_functions: set[Key] = field(default_factory=set)
    generation: int = 0  # changes whenever what it holds changes
    any_path: bool = False  # unqualified names may be in any schema (see the module docstring)

    def _fresh(self, at: float) -> bool:
        return self.clock() - at <= CACHE_TTL

    def relation(self, schema: str | None, name: str) -> Relation | None:
        entry = self.relations.get((schema, name))
        if entry is None or not self._fresh(entry[0]):
            self.wanted_relations.add((schema, name))
            return None
        return entry[1]

    def functions(self, schema: str | None, name: str) -> tuple[Function, ...] | None:
        entry = self.functions_by_name.get((schema, name))
        if entry is None or not self._fresh(entry[0]):
            self.wanted_functions.add((schema, name))
            return None
        return entry[1]

    @property
    def wanting(self) -> bool:
        return bool(self.wanted_relations or self.wanted_functions)

    def take_wanted(self) -> tuple[list[Key], list[Key]]:
        out = sorted(self.wanted_relations, key=str), sorted(self.wanted_functions, key=str)
        self.wanted_relations, self.wanted_functions = set(), set()
        return out

    def learn(
        self, rows: Sequence[Sequence[str | None]], relations: list[Key], functions: list[Key]
    ) -> None:
        now = self.clock()
        found: dict[Key, list[Function]] = {k: [] for k in functions}
        candidates: dict[Key, list[Relation]] = {k: [] for k in relations}
        for row in rows:
            tag, key = row[0], (row[1], row[2] or "")
            if tag == "r" and row[3] is not None:
                columns: Any = json.loads(row[5] or "[]")
                relation = Relation(row[3], row[4] or "", tuple(str(c) for c in columns), row[6])
                candidates.setdefault(key, []).append(relation)
            elif tag == "f" and row[3] is not None:
                returns_set = len(row) > 7 and row[7] in _TRUE
                function = Function(
                    row[3], key[1], row[4] or "", row[5] in _TRUE, row[6], returns_set
                )
                found.setdefault(key, []).append(function)
        for key, functions_found in found.items():
            self.functions_by_name[key] = (now, tuple(functions_found))
        for key, relations_found in candidates.items():
            self.relations[key] = (now, _merged(relations_found))
        self.generation += 1

    def clear(self) -> None:
        self.relations.clear()
        self.functions_by_name.clear()
        self.generation += 1


def _merged(candidates: list[Relation]) -> Relation | None:
    """The relation an unqualified name reaches; with several candidates (`any_path`), one
    whose schema is unknown, with all their columns; None when one is a view (not followed)."""
    if len(candidates) <= 1:
        return candidates[0] if candidates else None
    if any(r.definition is not None for r in candidates):
        return None
    columns = dict.fromkeys(c for r in candidates for c in r.columns)
    return Relation(ANY, candidates[0].name, tuple(columns))
