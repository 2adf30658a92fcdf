"""Statement facts for guardrails: what one SQL statement is, read off PostgreSQL's own tree.

Pure and sans-I/O: text in, one `Facts` per statement out, derived from the parse tree
pglast (libpg_query) builds, never from regular expressions, so comments, case, whitespace,
quoting, dollar-quoting and Unicode escapes are resolved exactly as the server resolves them.
The tree walker is the read-only classifier's (`readonly.walk`), so both see the same nodes.

The facts, per statement:

* `kinds`: every kind the statement is, the strongest first: `read` (SELECT, SHOW, EXPLAIN,
  cursors, COPY TO STDOUT), `write` (INSERT/UPDATE/DELETE/MERGE, also inside a CTE or a
  PREPARE, TRUNCATE, COPY FROM, SELECT INTO), `ddl`, `dcl` (privileges and roles),
  `transaction`, `utility` (SET, VACUUM, LOCK, DO, CALL, EXECUTE, ...). A statement may be
  several: `WITH d AS (DELETE ...) SELECT ...` is read and write. A call of a built-in
  function the read-only check refuses adds the kind the shared table gives it
  (`gateway.policy.writes`): `SELECT nextval('s')` is read and write, `SELECT
  pg_advisory_lock(1)` read and utility.
* `tables`: every relation named anywhere in the tree, `schema.name` when qualified, as the
  server reads the identifier (unquoted names folded to lower case). DROP's object lists
  count too.
* `functions`: every function called (unqualified name, lower case), CALL included.
* `flags`: `program` (COPY ... PROGRAM), `server_files` (COPY to/from a server file, file
  and large-object import/export functions), `remote` (dblink, foreign servers, user
  mappings, foreign tables, subscriptions), `dynamic_sql` (DO blocks, CREATE
  FUNCTION/PROCEDURE/EXTENSION/LANGUAGE, functions running SQL text of their own),
  `identity_change` (SET ROLE, SET SESSION AUTHORIZATION, session_replication_role,
  set_config()), `server_config` (ALTER SYSTEM, LOAD, configuration reloads),
  `server_admin` (terminating backends, WAL, replication slots, ...), and the umbrella
  `outside_data`, set with any of those; plus `privilege_change` (GRANT/REVOKE, roles,
  owners, policies), `where_less_write` (UPDATE/DELETE without a WHERE, or with one that
  names no column, such as `WHERE true`; TRUNCATE), `row_lock` (FOR UPDATE/SHARE).
* `opaque`: the statement runs code whose effects cannot be read here (DO, dynamic SQL):
  guardrails treat every table and kind condition of a deny rule as met for it.

What parsing cannot see: what a user-defined function, trigger, view or rule does. The
functions a statement calls are kept (`calls`) for the catalog lookup that tells whether
they write (`gateway.policy.functions`, which fills `writers`); for the rest, give the
connection's database role matching privileges.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from pglast import ast, parse_sql
from pglast.enums import AlterTableType, ObjectType, VariableSetKind
from pglast.parser import normalize, split

from gateway.policy.readonly import function_name, walk
from gateway.policy.writes import FUNCTIONS

KINDS = ("write", "ddl", "dcl", "utility", "transaction", "read")  # strongest first

OUTSIDE_DATA_FLAGS = frozenset(
    {
        "program",
        "server_files",
        "remote",
        "dynamic_sql",
        "identity_change",
        "server_config",
        "server_admin",
    }
)
FLAGS = OUTSIDE_DATA_FLAGS | {"outside_data", "privilege_change", "where_less_write", "row_lock"}


# Functions whose call alone says the statement leaves the data, and the kind a call of a
# writing built-in adds: one table with the read-only check (`gateway.policy.writes`).
FUNCTION_FLAGS: dict[str, str] = {n: e.flag for n, e in FUNCTIONS.items() if e.flag}
FUNCTION_KINDS: dict[str, str] = {n: e.kind for n, e in FUNCTIONS.items() if e.kind}

_IDENTITY_SETTINGS = frozenset({"role", "session_authorization", "session_replication_role"})
_WRITE_NODES = (ast.InsertStmt, ast.UpdateStmt, ast.DeleteStmt, ast.MergeStmt)
_READ_STATEMENTS = (
    ast.SelectStmt,
    ast.VariableShowStmt,
    ast.FetchStmt,
    ast.ClosePortalStmt,
)
_PRIVILEGE_STATEMENTS = (
    ast.GrantStmt,
    ast.GrantRoleStmt,
    ast.CreateRoleStmt,
    ast.AlterRoleStmt,
    ast.AlterRoleSetStmt,
    ast.DropRoleStmt,
    ast.AlterDefaultPrivilegesStmt,
    ast.AlterOwnerStmt,
    ast.ReassignOwnedStmt,
    ast.DropOwnedStmt,
    ast.CreatePolicyStmt,
    ast.AlterPolicyStmt,
)
_DDL_PREFIXES = ("Create", "Alter", "Drop", "Rename", "Comment", "SecLabel", "Import", "Define")
_DDL_STATEMENTS = frozenset(
    {"IndexStmt", "ViewStmt", "RuleStmt", "CompositeTypeStmt", "RefreshMatViewStmt"}
)
# DROP of these names relations (tables, views, sequences...), so their names are tables.
_RELATION_OBJECTS = frozenset(
    {
        ObjectType.OBJECT_TABLE,
        ObjectType.OBJECT_VIEW,
        ObjectType.OBJECT_MATVIEW,
        ObjectType.OBJECT_FOREIGN_TABLE,
        ObjectType.OBJECT_SEQUENCE,
        ObjectType.OBJECT_INDEX,
    }
)


# Statements that set up or use connections to other servers (foreign data, subscriptions).
_REMOTE_STATEMENTS = (
    ast.CreateForeignServerStmt,
    ast.AlterForeignServerStmt,
    ast.CreateUserMappingStmt,
    ast.AlterUserMappingStmt,
    ast.CreateFdwStmt,
    ast.ImportForeignSchemaStmt,
    ast.CreateForeignTableStmt,
    ast.CreateSubscriptionStmt,
    ast.AlterSubscriptionStmt,
)
# ALTER TABLE subcommands that change who may see or change the rows.
_PRIVILEGE_SUBCOMMANDS = frozenset(
    {
        AlterTableType.AT_ChangeOwner,
        AlterTableType.AT_EnableRowSecurity,
        AlterTableType.AT_DisableRowSecurity,
        AlterTableType.AT_ForceRowSecurity,
        AlterTableType.AT_NoForceRowSecurity,
    }
)


class UnparsableSQL(ValueError):
    """The text is not SQL PostgreSQL would accept; guardrails deny it."""


@dataclass(frozen=True, slots=True)
class Facts:
    """What one statement is; `index` counts from 1 within its query string."""

    index: int
    kinds: tuple[str, ...]
    tables: frozenset[str] = frozenset()
    functions: frozenset[str] = frozenset()
    flags: frozenset[str] = frozenset()
    opaque: bool = False
    text: str = ""  # the statement's own text, for explanations
    # Every function called, as written: its name parts (schema-qualified or not) exactly as
    # the server reads them, for the catalog lookup of what user functions do
    # (`gateway.policy.functions`).
    calls: frozenset[tuple[str, ...]] = frozenset()
    # Schemas a SET search_path / set_config('search_path', ...) names; None for a value
    # that cannot be read here. Volatile user functions the catalog found the statement may
    # call (`gateway.policy.functions`): they make it a write unless a rule trusts them.
    search_path: tuple[str | None, ...] = ()
    writers: frozenset[str] = frozenset()

    @property
    def effective_kinds(self) -> tuple[str, ...]:
        """The kinds, with `write` first when a user function the statement calls writes."""
        if self.writers and "write" not in self.kinds:
            return ("write", *self.kinds)
        return self.kinds

    @property
    def kind(self) -> str:
        """The strongest kind, for one-word summaries."""
        return self.kinds[0]

    def describe(self) -> str:
        parts = [f"kind={'+'.join(self.effective_kinds)}"]
        if self.tables:
            parts.append(f"tables={','.join(sorted(self.tables))}")
        if self.functions:
            parts.append(f"functions={','.join(sorted(self.functions))}")
        if self.flags:
            parts.append(f"flags={','.join(sorted(self.flags))}")
        if self.writers:
            parts.append(f"volatile_functions={','.join(sorted(self.writers))}")
        if self.opaque:
            parts.append("opaque")
        return " ".join(parts)


def statement_facts(sql: str) -> list[Facts]:
    """One `Facts` per statement of `sql`; raises `UnparsableSQL` for what is not SQL."""
    if "\0" in sql:
        # libpg_query stops at a NUL, the server refuses the message: never judge a prefix.
        raise UnparsableSQL("the statement cannot be parsed (it contains a NUL character)")
    return _CACHE.facts(sql)


def _parsed_facts(sql: str) -> tuple[list[Facts], bool]:
    """The facts of every statement, and whether any of them depends on a constant's value."""
    try:
        statements = parse_sql(sql)
    except Exception as exc:  # ParseError, and a few other types on odd input (NUL bytes)
        raise UnparsableSQL(f"the statement cannot be parsed ({exc})") from exc
    out = []
    dependent = False
    for index, raw in enumerate(statements, 1):
        # pglast gives character offsets; a length of 0 means "to the end of the string".
        start = raw.stmt_location or 0
        end = start + raw.stmt_len if raw.stmt_len else len(sql)
        facts, uses_constant = _facts(index, raw.stmt, sql[start:end].strip())
        out.append(facts)
        dependent = dependent or uses_constant
    return out, dependent


def _shape(facts: Facts) -> tuple[object, ...]:
    return (
        facts.index,
        facts.kinds,
        facts.tables,
        facts.functions,
        facts.flags,
        facts.opaque,
        facts.calls,
        facts.search_path,
    )


class _FactsCache:
    """Facts by statement shape: the text with its constants replaced by parameters.

    Building pglast's Python tree is most of what judging a statement costs (~40 of ~55 us
    for a pgbench query), and applications send the same few shapes with new constants each
    time. libpg_query's `normalize` (C, ~2 us) gives the shape; a shape's facts are cached
    only when they cannot depend on the constants: the shape itself parses, its facts equal
    those of the text it was first seen with, and no fact was read off a constant's value
    (`_facts` reports that). Anything else is parsed each time, as without the cache. A
    parameter in place of a constant is judged as strictly as the constant could be (the
    extended protocol sends such statements), so even a shape wrongly cached would only
    refuse more, never allow more.
    """

    MAX_ENTRIES = 2048
    MAX_TEXT = 4096  # longer statements (bulk VALUES lists) are rarely sent twice

    def __init__(self) -> None:
        # shape -> the facts to reuse, or None: parse this shape every time
        self._entries: dict[str, tuple[Facts, ...] | None] = {}

    def facts(self, sql: str) -> list[Facts]:
        shape = self._shape_of(sql)
        if shape is None:
            return _parsed_facts(sql)[0]
        cached = self._entries.get(shape, _MISSING)
        if cached is _MISSING:
            facts, dependent = _parsed_facts(sql)
            self._remember(shape, None if dependent else self._reusable(shape, facts))
            return facts
        if cached is None:
            return _parsed_facts(sql)[0]
        texts = self._texts(sql, len(cached))
        if texts is None:
            return _parsed_facts(sql)[0]
        return [replace(f, text=text) for f, text in zip(cached, texts, strict=True)]

    def _shape_of(self, sql: str) -> str | None:
        if len(sql) > self.MAX_TEXT:
            return None
        try:
            return normalize(sql)
        except Exception:  # not SQL: the full parse says why
            return None

    @staticmethod
    def _reusable(shape: str, facts: list[Facts]) -> tuple[Facts, ...] | None:
        try:
            generic, dependent = _parsed_facts(shape)
        except UnparsableSQL:  # a constant where the grammar takes no parameter
            return None
        if dependent or [_shape(f) for f in generic] != [_shape(f) for f in facts]:
            return None
        return tuple(generic)

    @staticmethod
    def _texts(sql: str, count: int) -> list[str] | None:
        """Each statement's own text, cut where `_parsed_facts` cuts it."""
        try:
            slices = split(sql, with_parser=True, only_slices=True)
        except Exception:  # normalize accepted it; be safe anyway
            return None
        if len(slices) != count:
            return None
        return [sql[s].strip() for s in slices]

    def _remember(self, shape: str, facts: tuple[Facts, ...] | None) -> None:
        entries = self._entries
        if len(entries) >= self.MAX_ENTRIES:
            del entries[next(iter(entries))]  # first in, first out: dicts keep insertion order
        entries[shape] = facts


_MISSING: Any = object()
_CACHE = _FactsCache()


class _Collector:
    def __init__(self) -> None:
        self.kinds: set[str] = set()
        self.tables: set[str] = set()
        self.functions: set[str] = set()
        self.flags: set[str] = set()
        self.calls: set[tuple[str, ...]] = set()
        self.search_path: list[str | None] = []

    def facts(self, index: int, text: str) -> Facts:
        flags = set(self.flags)
        if flags & OUTSIDE_DATA_FLAGS:
            flags.add("outside_data")
        kinds = tuple(k for k in KINDS if k in self.kinds) or ("utility",)
        return Facts(
            index=index,
            kinds=kinds,
            tables=frozenset(self.tables),
            functions=frozenset(self.functions),
            flags=frozenset(flags),
            opaque="dynamic_sql" in flags,
            text=text,
            calls=frozenset(self.calls),
            search_path=tuple(self.search_path),
        )


def _facts(index: int, stmt: Any, text: str) -> tuple[Facts, bool]:
    """The statement's facts, and whether one was read off a constant's value."""
    out = _Collector()
    uses_constant = False
    out.kinds.add(_kind(stmt))
    _statement_flags(stmt, out)
    for node in walk(stmt):
        if isinstance(node, ast.RangeVar):
            out.tables.add(_relation(node))
        elif isinstance(node, _WRITE_NODES):
            out.kinds.add("write")
            if isinstance(node, ast.UpdateStmt | ast.DeleteStmt) and _where_less(node):
                out.flags.add("where_less_write")
        elif isinstance(node, ast.FuncCall):
            name = function_name(node)
            out.functions.add(name)
            out.calls.add(tuple(str(getattr(p, "sval", "")) for p in node.funcname or ()))
            uses_constant = uses_constant or name == "set_config"  # its setting's name
            if name in FUNCTION_KINDS:
                out.kinds.add(FUNCTION_KINDS[name])
            if name in FUNCTION_FLAGS and not _harmless_set_config(name, node):
                out.flags.add(FUNCTION_FLAGS[name])
            if name == "set_config":
                _set_config_path(node, out)
        elif isinstance(node, ast.SelectStmt):
            if node.lockingClause:
                out.flags.add("row_lock")
            if node.intoClause is not None:
                out.kinds.update(("write", "ddl"))
                out.tables.add(_relation(node.intoClause.rel))
        elif isinstance(node, ast.DropStmt) and node.removeType in _RELATION_OBJECTS:
            for names in node.objects or ():
                out.tables.add(".".join(str(getattr(n, "sval", "")) for n in names))
        elif isinstance(node, ast.CommentStmt | ast.SecLabelStmt):
            _object_table(node, out)
        elif isinstance(node, ast.VariableSetStmt):
            _set_flags(node, out)
        elif isinstance(node, ast.AlterTableCmd) and node.subtype in _PRIVILEGE_SUBCOMMANDS:
            out.flags.add("privilege_change")
    return out.facts(index, text), uses_constant


def _kind(stmt: Any) -> str:
    if isinstance(stmt, _READ_STATEMENTS):
        return "read"
    if isinstance(stmt, ast.ExplainStmt | ast.PrepareStmt | ast.DeclareCursorStmt):
        # The wrapped statement's kind (EXPLAIN without ANALYZE does not run it, but is
        # judged like it rather than telling the two apart).
        return _kind(stmt.query)
    if isinstance(stmt, ast.CopyStmt):
        if stmt.is_from:
            return "write"
        return "read"
    if isinstance(stmt, ast.TruncateStmt | ast.InsertStmt | ast.UpdateStmt | ast.DeleteStmt):
        return "write"
    if isinstance(stmt, ast.MergeStmt | ast.CreateTableAsStmt):
        return "write"
    if isinstance(stmt, _PRIVILEGE_STATEMENTS):
        return "dcl"
    if isinstance(stmt, ast.TransactionStmt):
        return "transaction"
    if isinstance(stmt, ast.AlterSystemStmt):
        return "utility"
    name = type(stmt).__name__
    if name.startswith(_DDL_PREFIXES) or name in _DDL_STATEMENTS:
        return "ddl"
    return "utility"


def _statement_flags(stmt: Any, out: _Collector) -> None:
    """Flags that belong to the top statement rather than to nodes found anywhere."""
    if isinstance(stmt, _PRIVILEGE_STATEMENTS):
        out.flags.add("privilege_change")
    elif isinstance(stmt, ast.TruncateStmt):
        out.flags.add("where_less_write")
    elif isinstance(stmt, ast.CreateTableAsStmt):
        out.kinds.add("ddl")
    elif isinstance(stmt, ast.CopyStmt):
        if stmt.is_program:
            out.flags.add("program")
        elif stmt.filename is not None:
            out.flags.add("server_files")
    elif isinstance(stmt, ast.DoStmt | ast.CreateFunctionStmt):
        out.flags.add("dynamic_sql")
    elif isinstance(stmt, ast.AlterSystemStmt | ast.LoadStmt):
        out.flags.add("server_config")
    elif isinstance(stmt, ast.CreateExtensionStmt | ast.CreatePLangStmt):
        # An extension's script runs as the server wants (dblink, adminpack, untrusted PLs).
        out.flags.add("dynamic_sql")
    elif isinstance(stmt, _REMOTE_STATEMENTS):
        out.flags.add("remote")


def _object_table(stmt: Any, out: _Collector) -> None:
    """COMMENT ON / SECURITY LABEL ON a table or column name it as a list of strings."""
    names = (
        [str(getattr(n, "sval", "")) for n in stmt.object or ()]
        if isinstance(stmt.object, tuple | list)
        else []
    )
    if stmt.objtype == ObjectType.OBJECT_COLUMN:
        names = names[:-1]
    elif stmt.objtype not in _RELATION_OBJECTS:
        return
    if names:
        out.tables.add(".".join(names))


def _path_entries(value: str) -> list[str | None]:
    """Schemas a search_path value may name: the value itself (SET quotes each list item)
    and its comma-separated parts (set_config splits them), unquoted; too many to
    follow: None."""
    parts = [value, *(p.strip() for p in value.split(","))]
    out: list[str | None] = [
        p[1:-1].replace('""', '"') if len(p) >= 2 and p[0] == p[-1] == '"' else p
        for p in parts
        if p
    ]
    return out if len(out) <= 64 else [None]


def _set_config_path(call: Any, out: _Collector) -> None:
    args = list(call.args or ())
    setting = _string(args[0]) if args else None
    if setting is None:
        out.search_path.append(None)  # which setting it changes cannot be read here
    elif setting.lower() == "search_path":
        value = _string(args[1]) if len(args) > 1 else None
        out.search_path.extend(_path_entries(value) if value is not None else [None])


def _string(node: Any) -> str | None:
    value = getattr(getattr(node, "val", None), "sval", None)
    return value if isinstance(node, ast.A_Const) and isinstance(value, str) else None


def _set_flags(stmt: Any, out: _Collector) -> None:
    if (stmt.name or "").lower() == "search_path" and stmt.kind == VariableSetKind.VAR_SET_VALUE:
        for arg in stmt.args or ():
            value = _string(arg)
            out.search_path.extend(_path_entries(value) if value is not None else [None])
    if stmt.kind in (VariableSetKind.VAR_RESET, VariableSetKind.VAR_RESET_ALL):
        return  # back to the session's own values
    if (stmt.name or "").lower() in _IDENTITY_SETTINGS:
        out.flags.add("identity_change")


def _harmless_set_config(name: str, call: Any) -> bool:
    """set_config('search_path', ...) and the like: a constant, ordinary setting name."""
    if name != "set_config" or not call.args:
        return False
    first = call.args[0]
    setting = getattr(getattr(first, "val", None), "sval", None)
    return isinstance(setting, str) and setting.lower() not in _IDENTITY_SETTINGS


def _relation(rv: Any) -> str:
    parts = [p for p in (rv.catalogname, rv.schemaname, rv.relname) if p]
    return ".".join(str(p) for p in parts)


def _where_less(stmt: Any) -> bool:
    """No WHERE, or one that names no column (`WHERE true`, `WHERE 1 = 1`, `WHERE $1`)."""
    where = stmt.whereClause
    if where is None:
        return True
    if isinstance(where, ast.CurrentOfExpr):
        return False  # WHERE CURRENT OF a cursor: one row
    return not any(isinstance(n, ast.ColumnRef) for n in walk(where))
