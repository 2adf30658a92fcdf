"""Read-only enforcement for PostgreSQL: is this SQL text safe to run on a read-only grant?

Pure and sans-I/O: text in, a `Verdict` out, decided on the tree PostgreSQL's own parser
builds (pglast wraps libpg_query), never on regular expressions. The rules, fail closed:

1. Unparsable text is refused: what we cannot read we do not wave through.
2. Every statement of a multi-statement string must pass; one refusal refuses the string.
3. Only an allow-list of statement types passes: SELECT/VALUES/TABLE, SHOW, EXPLAIN (of an
   allowed statement; ANALYZE runs it), cursors over allowed queries (DECLARE, FETCH, MOVE,
   CLOSE), PREPARE of an allowed statement, DEALLOCATE, transaction control without READ
   WRITE or two-phase commit, LISTEN/UNLISTEN, DISCARD, RESET, harmless SET, COPY ... TO
   STDOUT. Everything else (writes, DDL, privilege changes, VACUUM, LOCK, NOTIFY, CALL, DO,
   LOAD, ...) is refused with the statement's name.
4. Anywhere in an allowed statement's tree, refused: a data-modifying statement (INSERT,
   UPDATE, DELETE, MERGE inside a CTE), row locks (FOR UPDATE/NO KEY UPDATE/SHARE/KEY SHARE),
   SELECT INTO, and calls of functions known to write, to reach files or the network, or to
   run SQL text of their own (`DENIED_FUNCTIONS`, from the table in `gateway.policy.writes`
   that the guardrails read too).
5. SET ROLE / SET SESSION AUTHORIZATION / session_replication_role are refused, and so is
   any SET that would make transactions read-write (`SET default_transaction_read_only =
   off`, `SET TRANSACTION READ WRITE`, `BEGIN READ WRITE`): the gateway opens read-only
   sessions with `default_transaction_read_only=on` as defence in depth, and these are the
   ways to switch it off.
6. SQL-level `EXECUTE name` is refused: the statement it runs was prepared earlier and is not
   in this text. (Statements prepared with the extended protocol are checked at Parse.)

The tree walker (`walk`) and `function_name` are shared with the guardrails' statement
facts (`gateway.policy.facts`), so both checks see the same nodes.

What parsing cannot see: a user-defined function or operator that writes. The database role
of a read-only connection should be read-only too; `default_transaction_read_only` catches
writes made through such functions unless they switch it off themselves.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pglast import ast, parse_sql
from pglast.enums import TransactionStmtKind, VariableSetKind
from pglast.parser import ParseError

from gateway.policy.writes import FUNCTIONS

READ_ONLY_SQLSTATE = "42501"  # insufficient_privilege

# One table with the guardrails (`gateway.policy.writes`): every function it names is refused
# here, and gives a statement a write/utility kind or a flag there.
DENIED_FUNCTIONS: dict[str, str] = {name: e.reason for name, e in FUNCTIONS.items()}

# SET of these is refused outright (changing who we are, or skipping triggers).
_DENIED_SETTINGS = frozenset({"role", "session_authorization", "session_replication_role"})
# SET of these is refused when it would make transactions read-write.
_READ_ONLY_SETTINGS = frozenset({"default_transaction_read_only", "transaction_read_only"})
_TWO_PHASE = frozenset(
    {
        TransactionStmtKind.TRANS_STMT_PREPARE,
        TransactionStmtKind.TRANS_STMT_COMMIT_PREPARED,
        TransactionStmtKind.TRANS_STMT_ROLLBACK_PREPARED,
    }
)

# Statements named the way people write them, for the explanations.
_NAMES: dict[str, str] = {
    "InsertStmt": "INSERT",
    "UpdateStmt": "UPDATE",
    "DeleteStmt": "DELETE",
    "MergeStmt": "MERGE",
    "TruncateStmt": "TRUNCATE",
    "CopyStmt": "COPY",
    "CreateStmt": "CREATE TABLE",
    "CreateTableAsStmt": "CREATE TABLE AS",
    "ViewStmt": "CREATE VIEW",
    "IndexStmt": "CREATE INDEX",
    "AlterTableStmt": "ALTER TABLE",
    "DropStmt": "DROP",
    "RenameStmt": "ALTER ... RENAME",
    "GrantStmt": "GRANT/REVOKE",
    "GrantRoleStmt": "GRANT/REVOKE role",
    "CreateRoleStmt": "CREATE ROLE",
    "AlterRoleStmt": "ALTER ROLE",
    "DropRoleStmt": "DROP ROLE",
    "AlterDefaultPrivilegesStmt": "ALTER DEFAULT PRIVILEGES",
    "AlterOwnerStmt": "ALTER ... OWNER",
    "ReassignOwnedStmt": "REASSIGN OWNED",
    "DropOwnedStmt": "DROP OWNED",
    "CreateFunctionStmt": "CREATE FUNCTION",
    "DoStmt": "DO",
    "CallStmt": "CALL",
    "ExecuteStmt": "EXECUTE",
    "VacuumStmt": "VACUUM/ANALYZE",
    "ClusterStmt": "CLUSTER",
    "ReindexStmt": "REINDEX",
    "LockStmt": "LOCK",
    "NotifyStmt": "NOTIFY",
    "LoadStmt": "LOAD",
    "CheckPointStmt": "CHECKPOINT",
    "RefreshMatViewStmt": "REFRESH MATERIALIZED VIEW",
    "AlterSystemStmt": "ALTER SYSTEM",
    "CommentStmt": "COMMENT",
    "SecLabelStmt": "SECURITY LABEL",
    "CreateSchemaStmt": "CREATE SCHEMA",
    "CreateExtensionStmt": "CREATE EXTENSION",
    "CreatedbStmt": "CREATE DATABASE",
    "DropdbStmt": "DROP DATABASE",
    "CreateSeqStmt": "CREATE SEQUENCE",
    "AlterSeqStmt": "ALTER SEQUENCE",
    "RuleStmt": "CREATE RULE",
    "CreateTrigStmt": "CREATE TRIGGER",
    "ImportForeignSchemaStmt": "IMPORT FOREIGN SCHEMA",
    "SelectStmt": "SELECT",
    "ExplainStmt": "EXPLAIN",
}

_PRIVILEGE_STATEMENTS = frozenset(
    {
        "GrantStmt",
        "GrantRoleStmt",
        "CreateRoleStmt",
        "AlterRoleStmt",
        "AlterRoleSetStmt",
        "DropRoleStmt",
        "AlterDefaultPrivilegesStmt",
        "AlterOwnerStmt",
        "ReassignOwnedStmt",
        "DropOwnedStmt",
        "CreatePolicyStmt",
        "AlterPolicyStmt",
    }
)
_WRITE_STATEMENTS = frozenset(
    {"InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt", "TruncateStmt", "CopyStmt"}
)


@dataclass(frozen=True, slots=True)
class Verdict:
    """The decision on one SQL text; `reason` explains a refusal (or says why it passed)."""

    allowed: bool
    reason: str


class _Refused(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _name(node: Any) -> str:
    cls = type(node).__name__
    return _NAMES.get(cls, cls.removesuffix("Stmt"))


def _category(node: Any) -> str:
    cls = type(node).__name__
    if cls in _PRIVILEGE_STATEMENTS:
        return "changes privileges"
    if cls in _WRITE_STATEMENTS:
        return "writes data"
    if cls.startswith(("Create", "Alter", "Drop", "Rename", "Comment", "SecLabel", "Import")):
        return "changes the schema (DDL)"
    if cls in ("IndexStmt", "ViewStmt", "RuleStmt", "CreatedbStmt", "DropdbStmt"):
        return "changes the schema (DDL)"
    return "is not a read-only statement"


def check_read_only(sql: str) -> Verdict:
    """Decide whether `sql` (one query string, any number of statements) is read-only."""
    try:
        statements = parse_sql(sql)
    except ParseError as exc:
        return Verdict(False, f"read-only access: the statement cannot be parsed ({exc})")
    except Exception as exc:  # pglast raises a few other types on odd input (e.g. NUL bytes)
        return Verdict(False, f"read-only access: the statement cannot be parsed ({exc})")
    several = len(statements) > 1
    for index, raw in enumerate(statements, 1):
        try:
            _check_statement(raw.stmt)
        except _Refused as refused:
            where = f"statement {index} of {len(statements)}: " if several else ""
            return Verdict(False, f"read-only access: {where}{refused.reason}")
    return Verdict(True, "read-only")


def _check_statement(stmt: Any) -> None:
    if isinstance(stmt, ast.SelectStmt):
        _check_query(stmt)
    elif isinstance(stmt, ast.ExplainStmt):
        # EXPLAIN ANALYZE runs the statement; EXPLAIN alone does not, but an explained write
        # is refused anyway rather than telling the two apart.
        _check_statement(stmt.query)
    elif isinstance(stmt, ast.DeclareCursorStmt):
        _check_query(stmt.query)
    elif isinstance(stmt, ast.PrepareStmt):
        _check_statement(stmt.query)
    elif isinstance(
        stmt,
        ast.VariableShowStmt
        | ast.FetchStmt
        | ast.ClosePortalStmt
        | ast.DeallocateStmt
        | ast.ListenStmt
        | ast.UnlistenStmt
        | ast.DiscardStmt,
    ):
        return
    elif isinstance(stmt, ast.VariableSetStmt):
        _check_set(stmt)
    elif isinstance(stmt, ast.TransactionStmt):
        if stmt.kind in _TWO_PHASE:
            raise _Refused("two-phase commit (PREPARE/COMMIT/ROLLBACK PREPARED) is refused")
        _check_transaction_options(stmt.options, "a READ WRITE transaction")
    elif isinstance(stmt, ast.CopyStmt):
        _check_copy(stmt)
    elif isinstance(stmt, ast.ExecuteStmt):
        raise _Refused(
            f"EXECUTE {stmt.name} runs a statement prepared earlier that cannot be checked "
            "here; run the statement itself"
        )
    elif isinstance(stmt, ast.DoStmt):
        raise _Refused("DO runs procedural code, which may write")
    elif isinstance(stmt, ast.CallStmt):
        raise _Refused("CALL runs a procedure, which may write")
    else:
        raise _Refused(f"{_name(stmt)} {_category(stmt)}")


def _check_query(query: Any) -> None:
    """A SELECT-like tree: refuse anything in it that writes, locks or escapes."""
    if isinstance(query, ast.SelectStmt) and query.intoClause is not None:
        raise _Refused("SELECT INTO creates a table")
    for node in walk(query):
        if isinstance(node, ast.InsertStmt | ast.UpdateStmt | ast.DeleteStmt | ast.MergeStmt):
            raise _Refused(f"the query contains {_name(node)}, which writes data")
        if isinstance(node, ast.SelectStmt):
            if node.lockingClause:
                raise _Refused("SELECT ... FOR UPDATE/SHARE locks rows")
            if node.intoClause is not None:
                raise _Refused("SELECT INTO creates a table")
        elif isinstance(node, ast.FuncCall):
            name = function_name(node)
            if name in DENIED_FUNCTIONS:
                raise _Refused(f"function {name}() {DENIED_FUNCTIONS[name]}")


def function_name(call: Any) -> str:
    parts = [getattr(p, "sval", "") for p in call.funcname or ()]
    return str(parts[-1]).lower() if parts else ""


def walk(node: Any) -> Iterator[Any]:
    """Every node of the tree under `node`, itself included (shared with `facts`)."""
    stack = [node]
    while stack:
        current = stack.pop()
        if isinstance(current, list | tuple):
            stack.extend(current)
            continue
        if not isinstance(current, ast.Node):
            continue
        yield current
        for attr in getattr(type(current), "__slots__", ()):
            value = getattr(current, attr, None)
            if isinstance(value, ast.Node | list | tuple):
                stack.append(value)


def _check_set(stmt: Any) -> None:
    name = (stmt.name or "").lower()
    kind = stmt.kind
    if kind in (VariableSetKind.VAR_RESET, VariableSetKind.VAR_RESET_ALL):
        return  # back to the session's start values, read-only included
    if name in _DENIED_SETTINGS:
        shown = name.replace("_", " ").upper()
        raise _Refused(f"SET {shown} changes the identity or the rules of the session")
    if kind == VariableSetKind.VAR_SET_MULTI:
        # SET TRANSACTION ... / SET SESSION CHARACTERISTICS AS TRANSACTION ...
        _check_transaction_options(stmt.args, "SET ... READ WRITE")
        return
    writable = name in _READ_ONLY_SETTINGS and kind == VariableSetKind.VAR_SET_VALUE
    if writable and not _truthy(stmt.args):
        raise _Refused(f"SET {name} would allow writes")
    for node in walk(stmt.args):
        if isinstance(node, ast.FuncCall):
            _check_query(node)


def _truthy(args: Any) -> bool:
    values = [_constant(a) for a in args or ()]
    return len(values) == 1 and str(values[0]).lower() in ("on", "true", "1", "yes", "t", "y")


def _constant(node: Any) -> object:
    if isinstance(node, ast.A_Const):
        val = node.val
        if isinstance(val, ast.String):
            return val.sval
        if isinstance(val, ast.Integer):
            return val.ival
        if isinstance(val, ast.Boolean):
            return "true" if val.boolval else "false"
    return None


def _check_transaction_options(options: Any, what: str) -> None:
    for option in options or ():
        if isinstance(option, ast.DefElem) and option.defname == "transaction_read_only":
            value = _constant(option.arg)
            if value in (0, "false", "off"):
                raise _Refused(f"{what} would allow writes")


def _check_copy(stmt: Any) -> None:
    if stmt.is_from:
        raise _Refused("COPY ... FROM writes data")
    if stmt.is_program:
        raise _Refused("COPY ... TO PROGRAM runs a program on the database server")
    if stmt.filename is not None:
        raise _Refused("COPY ... TO a file writes on the database server")
    if stmt.query is not None:
        _check_statement(stmt.query)
