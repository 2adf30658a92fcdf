"""The analysis's scopes (FROM items by name) and the small helpers over pglast nodes."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from pglast import ast
from pglast.enums import A_Expr_Kind, SubLinkType

from shared.lineage.model import ANY, UNKNOWN, Flow, ResultColumn, Source, Step

_EQUALITY = frozenset({"=", "<>", "!="})
EMPTY: Flow = {}


def union(flows: Iterable[Flow]) -> Flow:
    out: dict[Source, Any] = {}
    for flow in flows:
        for source, trail in flow.items():
            out.setdefault(source, trail)
    return out


def through(flow: Flow, step: Step) -> Flow:
    return {source: (step, *trail) for source, trail in flow.items()} if flow else flow


def unknown_flow(reason: str, source: Source = UNKNOWN) -> Flow:
    return {source: (Step(label=reason),)}


@dataclass
class Item:
    """One FROM item as names see it: its columns, or `unknown`, the flow of any column
    name (a relation the catalog lacks, a built-in function's output)."""

    name: str | None
    schema: str | None
    columns: list[tuple[str, Flow]]
    unknown: Flow | None = None

    def whole(self) -> Flow:
        return union([*(f for _, f in self.columns), self.unknown or EMPTY])

    def column(self, name: str) -> Flow | None:
        found = [f for n, f in self.columns if n == name]
        if found:
            return union(found)
        return self.unknown


@dataclass
class Scope:
    items: list[Item] = field(default_factory=list)
    ctes: dict[str, list[tuple[str, Flow]]] = field(default_factory=dict)
    parent: Scope | None = None
    windows: dict[str, Any] = field(default_factory=dict)  # WINDOW w AS (...), by name

    def window(self, name: str) -> Any:
        scope: Scope | None = self
        while scope is not None:
            if name in scope.windows:
                return scope.windows[name]
            scope = scope.parent
        return None

    def cte(self, name: str) -> list[tuple[str, Flow]] | None:
        scope: Scope | None = self
        while scope is not None:
            if name in scope.ctes:
                return scope.ctes[name]
            scope = scope.parent
        return None

    def resolve(self, names: Sequence[str]) -> Flow | None:
        """A column reference in this scope alone; None when it names nothing here."""
        if len(names) == 1:
            (name,) = names
            if name == ANY:
                return union(i.whole() for i in self.items)
            found = [f for i in self.items for n, f in i.columns if n == name]
            if found:
                return union(found)
            rows = [i.whole() for i in self.items if i.name == name]
            if rows:
                return union(rows)  # a whole-row reference: `t`
            vague = [i.unknown for i in self.items if i.unknown is not None]
            return union(vague) if vague else None
        *qualifier, name = names[-3:]
        table = qualifier[-1]
        schema = qualifier[0] if len(qualifier) == 2 else None
        items = [
            i
            for i in self.items
            if i.name == table and (schema is None or i.schema in (schema, None))
        ]
        if not items:
            return None
        if name == ANY:
            return union(i.whole() for i in items)
        found = [f for i in items if (f := i.column(name)) is not None]
        return union(found) if found else None


def names_of(fields: Iterable[Any] | None) -> list[str]:
    """Name parts as the server reads them; `*` for A_Star."""
    return [str(f.sval) if isinstance(f, ast.String) else ANY for f in fields or ()] or [ANY]


def string_list(nodes: Iterable[Any] | None) -> list[str]:
    return [str(n.sval) for n in nodes or () if isinstance(n, ast.String)]


_EQUALITY_KINDS = frozenset(
    {A_Expr_Kind.AEXPR_OP, A_Expr_Kind.AEXPR_OP_ANY, A_Expr_Kind.AEXPR_OP_ALL}
)
_SAME_KINDS = frozenset(
    {A_Expr_Kind.AEXPR_DISTINCT, A_Expr_Kind.AEXPR_NOT_DISTINCT, A_Expr_Kind.AEXPR_IN}
)


def is_equality(node: Any) -> bool:
    """`=`, `<>`, `!=` (also with ANY/ALL), IS [NOT] DISTINCT FROM, IN (list): they tell
    equal from different and nothing more."""
    if node.kind in _SAME_KINDS:
        return True
    return node.kind in _EQUALITY_KINDS and names_of(node.name)[-1] in _EQUALITY


def column_name(node: Any) -> str:
    """The name PostgreSQL gives a result column with no alias."""
    if isinstance(node, ast.ColumnRef):
        return names_of(node.fields)[-1]
    if isinstance(node, ast.FuncCall):
        return names_of(node.funcname)[-1]
    if isinstance(node, ast.TypeCast):
        inner = column_name(node.arg)
        if inner != "?column?":
            return inner
        return names_of(node.typeName.names)[-1] if node.typeName is not None else inner
    if isinstance(node, ast.A_Indirection) and node.indirection:
        last = node.indirection[-1]
        return str(last.sval) if isinstance(last, ast.String) else column_name(node.arg)
    if isinstance(node, ast.CaseExpr):
        return "case"
    if isinstance(node, ast.CoalesceExpr):
        return "coalesce"
    if isinstance(node, ast.SubLink):
        if node.subLinkType == SubLinkType.EXISTS_SUBLINK:
            return "exists"
        if node.subLinkType == SubLinkType.ARRAY_SUBLINK:
            return "array"
        targets = getattr(node.subselect, "targetList", None)
        if node.subLinkType == SubLinkType.EXPR_SUBLINK and targets:
            first = targets[0]
            return first.name or column_name(first.val)
    return "?column?"


def children(node: Any) -> Iterator[Any]:
    for attr in getattr(type(node), "__slots__", ()):
        if attr == "location":
            continue
        value = getattr(node, attr, None)
        if isinstance(value, ast.Node):
            yield value
        elif isinstance(value, list | tuple):
            yield from _flatten(value)


def _flatten(values: Iterable[Any]) -> Iterator[Any]:
    for v in values:
        if isinstance(v, ast.Node):
            yield v
        elif isinstance(v, list | tuple):
            yield from _flatten(v)


def returning(stmt: Any) -> Sequence[Any]:
    clause = getattr(stmt, "returningClause", None)
    if clause is not None:
        return clause.exprs or ()
    return getattr(stmt, "returningList", None) or ()


def resolve_in(names: str | list[str], scope: Scope) -> Flow | None:
    names = [names] if isinstance(names, str) else names
    current: Scope | None = scope
    while current is not None:
        found = current.resolve(names)
        if found is not None:
            return found
        current = current.parent
    return None


def named_columns(names: list[str], columns: Sequence[ResultColumn]) -> list[tuple[str, Flow]]:
    return [(names[i] if i < len(names) else c.name, c.flow) for i, c in enumerate(columns)]


def merge_columns(a: list[ResultColumn], b: list[ResultColumn]) -> list[ResultColumn]:
    if not a:
        return b
    if len(a) != len(b):
        flow = union([*(c.flow for c in a), *(c.flow for c in b)])
        return [ResultColumn(c.name, flow) for c in (a if len(a) > len(b) else b)]
    return [ResultColumn(x.name, union([x.flow, y.flow])) for x, y in zip(a, b, strict=True)]


def relation_name(rv: Any) -> str:
    return ".".join(p for p in (rv.schemaname, rv.relname) if p)
