"""The server's catalog as lineage needs it, asked over a side connection (sans-I/O).

`SessionCatalog` answers `shared.lineage.Catalog` from what it holds and notes what it
lacks; `lookup_sql` asks for the lacking names in one query (names hex-encoded: no quoting
to get wrong); `learn` takes that query's rows (text format). Answers are trusted for
CACHE_TTL seconds (other sessions may change the catalog) and dropped by `clear` after a
statement of this session that may change it.

The same queries as the gateway's inference check (`gateway.policy.lineage_check`), which
cannot be imported here: the agent answers its lineage on its own connection.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from shared.lineage import Function, Relation

CACHE_TTL = 10.0
Key = tuple[str | None, str]


def _hex(text: str | None) -> str:
    if text is None:
        return "NULL::text"
    return f"convert_from(decode('{text.encode('utf-8').hex()}', 'hex'), 'UTF8')"


def lookup_sql(relations: Sequence[Key], functions: Sequence[Key]) -> str:
    parts: list[str] = []
    if relations:
        values = ", ".join(f"({_hex(s)}, {_hex(n)})" for s, n in relations)
        parts.append(_RELATIONS.replace("VALUES_LIST", values))
    if functions:
        values = ", ".join(f"({_hex(s)}, {_hex(n)})" for s, n in functions)
        parts.append(_FUNCTIONS.replace("VALUES_LIST", values))
    return " UNION ALL ".join(parts)


_RELATIONS = (
    "SELECT 'r', q.s, q.n, ns.nspname::text, c.relname::text,"
    " (SELECT json_agg(a.attname::text ORDER BY a.attnum) FROM pg_catalog.pg_attribute a"
    " WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped)::text,"
    " CASE WHEN c.relkind IN ('v', 'm') THEN pg_catalog.pg_get_viewdef(c.oid) END"
    " FROM (VALUES VALUES_LIST) q(s, n)"
    " LEFT JOIN pg_catalog.pg_class c ON c.oid = pg_catalog.to_regclass(CASE WHEN q.s IS NULL"
    " THEN pg_catalog.quote_ident(q.n)"
    " ELSE pg_catalog.quote_ident(q.s) || '.' || pg_catalog.quote_ident(q.n) END)"
    " LEFT JOIN pg_catalog.pg_namespace ns ON ns.oid = c.relnamespace"
)
_FUNCTIONS = (
    "SELECT 'f', q.s, q.n, ns.nspname::text, l.lanname::text, (p.oid < 16384)::text,"
    " CASE WHEN l.lanname = 'sql' THEN p.prosrc END"
    " FROM (VALUES VALUES_LIST) q(s, n)"
    " LEFT JOIN (pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace ns ON ns.oid = p.pronamespace"
    " JOIN pg_catalog.pg_language l ON l.oid = p.prolang)"
    " ON p.proname::text = q.n AND CASE WHEN q.s IS NULL"
    " THEN ns.nspname = ANY (pg_catalog.current_schemas(true)) ELSE ns.nspname::text = q.s END"
)
_TRUE = frozenset({"t", "true"})


@dataclass
class SessionCatalog:
    clock: Callable[[], float]
    relations: dict[Key, tuple[float, Relation | None]] = field(default_factory=dict)
    functions_by_name: dict[Key, tuple[float, tuple[Function, ...]]] = field(default_factory=dict)
    wanted_relations: set[Key] = field(default_factory=set)
    wanted_functions: set[Key] = field(default_factory=set)
    generation: int = 0  # changes whenever what it holds changes

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
        for key in relations:
            self.relations[key] = (now, None)
        for row in rows:
            tag, key = row[0], (row[1], row[2] or "")
            if tag == "r" and row[3] is not None:
                columns: Any = json.loads(row[5] or "[]")
                self.relations[key] = (
                    now,
                    Relation(row[3], row[4] or "", tuple(str(c) for c in columns), row[6]),
                )
            elif tag == "f" and row[3] is not None:
                function = Function(row[3], key[1], row[4] or "", row[5] in _TRUE, row[6])
                found.setdefault(key, []).append(function)
        for key, functions_found in found.items():
            self.functions_by_name[key] = (now, tuple(functions_found))
        self.generation += 1

    def clear(self) -> None:
        self.relations.clear()
        self.functions_by_name.clear()
        self.generation += 1


# Built-in functions that run SQL given as text or read relations named by their arguments:
# their result is not their arguments'.
OPAQUE_BUILTINS = frozenset(
    {
        "query_to_xml",
        "query_to_xml_and_xmlschema",
        "table_to_xml",
        "table_to_xml_and_xmlschema",
        "cursor_to_xml",
        "schema_to_xml",
        "schema_to_xml_and_xmlschema",
        "database_to_xml",
        "database_to_xml_and_xmlschema",
        "ts_stat",
        "ts_rewrite",
        "lo_get",
        "loread",
        "pg_read_file",
        "pg_read_binary_file",
    }
)
# Settings a session may have stored a masked value in (set_config), once it has.
SETTING_READERS = frozenset({"current_setting"})
SETTING_RELATIONS = frozenset({"pg_settings"})
# Catalog relations holding samples of column values (ANALYZE's statistics).
STATISTICS = frozenset(
    {"pg_statistic", "pg_stats", "pg_stats_ext", "pg_stats_ext_exprs", "pg_statistic_ext_data"}
)
_OPAQUE = "wardgate_opaque_"


class FailClosedCatalog:
    """The session's catalog as masking must see it: what reads data lineage cannot follow
    (a function in another language than SQL, a SQL function with a standard body, a
    built-in of OPAQUE_BUILTINS, the statistics relations) is presented as reading any
    column of any table (a SQL function whose body is an EXECUTE, which lineage cannot
    follow), so its result is masked whole. `reason` names it for the notice."""

    def __init__(self, inner: SessionCatalog) -> None:
        self.inner = inner
        self._reasons: dict[str, str] = {}
        self.settings_tainted = False  # set_config stored a masked value

    def reason(self, key: str) -> str | None:
        return self._reasons.get(key)

    def _opaque(self, reason: str) -> str:
        for known, text in self._reasons.items():
            if text == reason:
                return known
        key = f"{_OPAQUE}{len(self._reasons)}"
        self._reasons[key] = reason
        return key

    def relation(self, schema: str | None, name: str) -> Relation | None:
        found = self.inner.relation(schema, name)
        if found is None or found.schema != "pg_catalog":
            return found
        if found.name in STATISTICS:
            key = self._opaque(f"pg_catalog.{found.name} holds samples of column values")
        elif found.name in SETTING_RELATIONS and self.settings_tainted:
            key = self._opaque("a setting may hold a masked value (set_config)")
        else:
            return found
        columns = ", ".join(f'{key}() as "{c}"' for c in found.columns)
        return Relation(found.schema, found.name, found.columns, f"select {columns}")

    def functions(self, schema: str | None, name: str) -> tuple[Function, ...] | None:
        if name.startswith(_OPAQUE) and name in self._reasons:
            return (Function("pg_catalog", name, "sql", False, f"execute {name}"),)
        found = self.inner.functions(schema, name)
        if found is None:
            return None
        out: list[Function] = []
        for f in found:
            opaque = f.name in OPAQUE_BUILTINS or (
                self.settings_tainted and f.name in SETTING_READERS
            )
            if f.builtin and not opaque:
                out.append(f)
            elif f.builtin or f.language != "sql" or not f.body:
                what = "SQL-standard body" if f.language == "sql" else f.language
                key = self._opaque(f"function {f.schema}.{f.name} ({what}) is not followed")
                out.append(Function(f.schema, f.name, "sql", False, f"execute {key}"))
            else:
                out.append(f)
        return tuple(out)
