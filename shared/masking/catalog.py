"""What masking adds to the session's catalog (`shared.lineage.catalog`, sans-I/O).

`FailClosedCatalog` wraps a session's `SessionCatalog` so that whatever reads data lineage
cannot follow (non-SQL functions, built-ins that run SQL text or read relations by name,
the statistics views, settings after set_config stored a masked value) reads, as lineage
sees it, any column of any table: its result is masked whole, with a reason for the notice.
"""

from __future__ import annotations

from shared.lineage import Function, Relation
from shared.lineage.catalog import SessionCatalog

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
