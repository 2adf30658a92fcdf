"""The walk over a pglast tree that computes a statement's `Lineage` (see the package doc).

One `_Analyzer` per statement; views and SQL function bodies are analysed by a child that
shares its findings (their clauses filter the statement's rows too). Expressions return a
`Flow`; anything not handled by name unions the flows of its children (fail closed), and
FROM items or names it cannot resolve carry `ANY` sources with a reason.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pglast import ast, parse_sql
from pglast.enums import A_Expr_Kind, SetOperation, SubLinkType

from shared.lineage.model import (
    ANY,
    UNKNOWN,
    Catalog,
    ClauseUse,
    Flow,
    Lineage,
    ResultColumn,
    Source,
    Step,
    UseKind,
    Write,
    direct,
)
from shared.lineage.tree import (
    EMPTY,
    Item,
    Scope,
    children,
    column_name,
    is_equality,
    merge_columns,
    named_columns,
    names_of,
    relation_name,
    resolve_in,
    returning,
    string_list,
    through,
    union,
    unknown_flow,
)

MAX_DEPTH = 8  # views and functions nested deeper than this are not followed (fail closed)
# Built-in set-returning functions (for a catalog that does not say `returns_set`).
SET_RETURNING = frozenset(
    {
        *("generate_series", "generate_subscripts", "unnest", "regexp_matches"),
        *("regexp_split_to_table", "string_to_table", "json_array_elements"),
        *("json_array_elements_text", "jsonb_array_elements", "jsonb_array_elements_text"),
        *("json_each", "json_each_text", "jsonb_each", "jsonb_each_text", "json_object_keys"),
        *("jsonb_object_keys", "json_to_recordset", "jsonb_to_recordset"),
        *("json_populate_recordset", "jsonb_populate_recordset", "jsonb_path_query"),
    }
)
# Built-in functions that read data named by a text argument (SQL text, a relation, a
# cursor, a whole schema or database, another server): lineage cannot follow them.
SQL_TEXT_FUNCTIONS = frozenset(
    {
        *(
            f"{what}_to_xml{suffix}"
            for what in ("query", "table", "schema", "database")
            for suffix in ("", "schema", "_and_xmlschema")
        ),
        "cursor_to_xml",
        "cursor_to_xmlschema",
        *("dblink", "dblink_exec", "dblink_open", "dblink_fetch", "dblink_send_query"),
        "dblink_get_result",
    }
)
# Expression nodes shown as a step of a path (the others are parts of one of these).
_SHOWN = (
    ast.A_Expr,
    ast.FuncCall,
    ast.TypeCast,
    ast.CaseExpr,
    ast.CoalesceExpr,
    ast.MinMaxExpr,
    ast.SubLink,
    ast.BoolExpr,
    ast.NullTest,
    ast.BooleanTest,
    ast.A_Indirection,
    ast.RowExpr,
    ast.A_ArrayExpr,
    ast.CollateClause,
)


@dataclass
class _Findings:
    uses: dict[ClauseUse, None] = field(default_factory=dict)
    writes: list[Write] = field(default_factory=list)
    unresolved: dict[str, None] = field(default_factory=dict)


class _Analyzer:
    def __init__(
        self,
        catalog: Catalog,
        findings: _Findings | None = None,
        depth: int = 0,
        params: bool = False,
        active: frozenset[tuple[str, str]] = frozenset(),
    ) -> None:
        self.catalog = catalog
        self.found = findings or _Findings()
        self.depth = depth
        self.params = params  # inside a SQL function: an unknown single name is a parameter
        self.active = active  # views and functions being expanded (a cycle is not followed)

    def note(self, reason: str, source: Source = UNKNOWN) -> Flow:
        self.found.unresolved.setdefault(reason)
        return unknown_flow(reason, source)

    def use(self, clause: str, flow: Flow, kind: UseKind, node: Any, other: Flow = EMPTY) -> None:
        step = Step(label=node) if isinstance(node, str) else Step(node=node)
        partner = frozenset(other)
        for source, trail in flow.items():
            plain = kind if direct(trail) and ANY not in (source.table, source.column) else "other"
            self.found.uses.setdefault(ClauseUse(clause, source, plain, step, partner))

    # ---- statements ----------------------------------------------------------------

    def statement(self, stmt: Any, scope: Scope | None = None) -> list[ResultColumn]:
        """The result columns of `stmt` (uses and writes go to the findings)."""
        scope = scope or Scope()
        if isinstance(stmt, ast.SelectStmt):
            return self.select(stmt, scope)
        if isinstance(stmt, ast.InsertStmt | ast.UpdateStmt | ast.DeleteStmt):
            return self.dml(stmt, scope)
        if isinstance(stmt, ast.MergeStmt):
            return self.merge(stmt, scope)
        if isinstance(stmt, ast.CopyStmt):
            return self.copy(stmt, scope)
        if isinstance(stmt, ast.DeclareCursorStmt | ast.PrepareStmt):
            return self.statement(stmt.query, scope)
        if isinstance(stmt, ast.ExplainStmt):
            self.statement(stmt.query, scope)  # EXPLAIN ANALYZE runs it: its clauses count
            return [ResultColumn("QUERY PLAN", EMPTY)]
        if isinstance(stmt, ast.CreateTableAsStmt):
            columns = self.statement(stmt.query, scope)
            into: Any = stmt.into
            self.write(relation_name(into.rel), columns)
            return []
        if isinstance(stmt, ast.ExecuteStmt):
            reason = f"EXECUTE {stmt.name}: a statement prepared with PREPARE is not followed"
            return [ResultColumn(ANY, self.note(reason))]
        if isinstance(stmt, ast.DoStmt):
            self.opaque("DO block", "a DO block runs code lineage cannot follow")
            return []
        if isinstance(stmt, ast.CallStmt):
            return [ResultColumn(column_name(stmt.funccall), self.expr(stmt.funccall, scope))]
        return []

    def opaque(self, clause: str, reason: str) -> Flow:
        """Code or SQL text this analysis cannot read: it may select rows by anything."""
        self.found.uses.setdefault(ClauseUse(clause, UNKNOWN, "other", Step(label=reason)))
        return self.note(reason)

    def write(self, target: str, columns: Sequence[ResultColumn]) -> None:
        if any(c.flow for c in columns):
            self.found.writes.append(Write(target, tuple(columns)))

    def select(self, stmt: Any, outer: Scope) -> list[ResultColumn]:
        scope = self.with_clause(stmt.withClause, outer)
        if stmt.op != SetOperation.SETOP_NONE:
            left = self.select(stmt.larg, scope)
            right = self.select(stmt.rarg, scope)
            columns = [
                ResultColumn(lc.name, union([lc.flow, rc.flow]))
                for lc, rc in zip(left, right, strict=False)
            ]
            self.sort(stmt.sortClause, columns, Scope(parent=scope))
            self.limits(stmt, scope)
            return columns
        if stmt.valuesLists:
            width = max(len(row) for row in stmt.valuesLists)
            flows: list[list[Flow]] = [[] for _ in range(width)]
            for row in stmt.valuesLists:
                for i, value in enumerate(row):
                    flows[i].append(self.expr(value, scope))
            return [ResultColumn(f"column{i + 1}", union(f)) for i, f in enumerate(flows)]
        inner = Scope(parent=scope)
        for item in stmt.fromClause or ():
            inner.items.extend(self.from_item(item, inner, scope))
        windows = {w.name: w for w in stmt.windowClause or () if w.name}
        inner.windows = windows
        columns = self.targets(stmt.targetList or (), inner)
        if stmt.whereClause is not None:
            self.condition(stmt.whereClause, inner, "WHERE")
        self.group(stmt.groupClause or (), columns, inner)
        if stmt.havingClause is not None:
            self.condition(stmt.havingClause, inner, "HAVING")
        for window in windows.values():
            self.window(window, inner)
        for expr in stmt.distinctClause or ():
            if expr is not None:
                flow = self.output_or_input(expr, columns, inner, output_first=True)
                self.use("DISTINCT ON", flow, "group", expr)
            else:
                # Plain DISTINCT ([None]) groups by every output column: the rows left
                # count the distinct values, as GROUP BY's groups do.
                for column in columns:
                    self.use("DISTINCT", column.flow, "group", column.name)
        self.sort(stmt.sortClause, columns, inner)
        self.limits(stmt, inner)
        if stmt.intoClause is not None:
            self.write(relation_name(stmt.intoClause.rel), columns)
            return []
        return columns

    def limits(self, stmt: Any, scope: Scope) -> None:
        for expr in (stmt.limitCount, stmt.limitOffset):
            if expr is not None:
                self.use("LIMIT", self.expr(expr, scope), "other", expr)

    def with_clause(self, clause: Any, outer: Scope) -> Scope:
        if clause is None:
            return outer
        scope = Scope(parent=outer)
        for cte in clause.ctes or ():
            names = string_list(cte.aliascolnames)
            query = cte.ctequery
            if clause.recursive and isinstance(query, ast.SelectStmt) and query.larg is not None:
                # Seed with the non-recursive term, then run to a fixed point: the recursive
                # term may carry more sources into each column on each pass.
                scope.ctes[cte.ctename] = named_columns(names, self.select(query.larg, scope))
                for _ in range(4):
                    before = {n: frozenset(f) for n, f in scope.ctes[cte.ctename]}
                    scope.ctes[cte.ctename] = named_columns(names, self.statement(query, scope))
                    if {n: frozenset(f) for n, f in scope.ctes[cte.ctename]} == before:
                        break
                else:
                    reason = f"recursive CTE {cte.ctename} did not settle"
                    scope.ctes[cte.ctename] = [(ANY, self.note(reason))]
            else:
                scope.ctes[cte.ctename] = named_columns(names, self.statement(query, scope))
        return scope

    def targets(self, targets: Iterable[Any], scope: Scope) -> list[ResultColumn]:
        columns: list[ResultColumn] = []
        for target in targets:
            val: Any = target.val
            if isinstance(val, ast.ColumnRef) and names_of(val.fields)[-1] == ANY:
                columns.extend(self.star(names_of(val.fields), scope))
                continue
            last = (getattr(val, "indirection", None) or (None,))[-1]
            if isinstance(val, ast.A_Indirection) and isinstance(last, ast.A_Star):
                flow = self.expr(val.arg, scope)  # (f(x)).*: every field of the row
                columns.append(ResultColumn(column_name(val.arg), through(flow, Step(node=val))))
                continue
            name = target.name or column_name(val)
            columns.append(ResultColumn(name, self.expr(val, scope)))
        return columns

    def star(self, names: list[str], scope: Scope) -> list[ResultColumn]:
        qualifier = names[:-1]
        items = scope.items
        if qualifier:
            items = [i for i in scope.items if i.name == qualifier[-1]]
            if not items:
                flow = self.resolve(names, scope)
                return [ResultColumn(qualifier[-1], flow)]
        out = [ResultColumn(n, f) for i in items for n, f in i.columns]
        out += [ResultColumn(ANY, i.unknown) for i in items if i.unknown]
        return out

    def group(self, groups: Iterable[Any], columns: list[ResultColumn], scope: Scope) -> None:
        for expr in groups:
            if isinstance(expr, ast.GroupingSet):
                self.group(expr.content or (), columns, scope)
                continue
            flow = self.output_or_input(expr, columns, scope, output_first=False)
            self.use("GROUP BY", flow, "group", expr)

    def sort(self, sorts: Any, columns: list[ResultColumn], scope: Scope) -> None:
        for sort in sorts or ():
            flow = self.output_or_input(sort.node, columns, scope, output_first=True)
            self.use("ORDER BY", flow, "other", sort.node)

    def window(self, window: Any, scope: Scope) -> None:
        for expr in window.partitionClause or ():
            self.use("window PARTITION BY", self.expr(expr, scope), "group", expr)
        for sort in window.orderClause or ():
            self.use("window ORDER BY", self.expr(sort.node, scope), "other", sort.node)

    def output_or_input(
        self, expr: Any, columns: list[ResultColumn], scope: Scope, *, output_first: bool
    ) -> Flow:
        """An ORDER BY / GROUP BY / DISTINCT ON item: an ordinal or an output name names a
        result column (ORDER BY prefers output names, GROUP BY input columns)."""
        if isinstance(expr, ast.A_Const) and isinstance(expr.val, ast.Integer):
            index = int(expr.val.ival or 0) - 1
            if 0 <= index < len(columns):
                return columns[index].flow
            return EMPTY
        if isinstance(expr, ast.ColumnRef) and len(expr.fields or ()) == 1:
            name = names_of(expr.fields)[0]
            named = [c.flow for c in columns if c.name == name]
            if named and (output_first or resolve_in(name, scope) is None):
                return union(named)
        return self.expr(expr, scope)

    # ---- FROM ----------------------------------------------------------------------

    def from_item(self, item: Any, scope: Scope, outer: Scope) -> list[Item]:
        """The items `item` adds to `scope` (LATERAL ones see the items before them)."""
        if isinstance(item, ast.RangeVar):
            return [self.range_var(item, outer)]
        if isinstance(item, ast.RangeSubselect):
            parent = scope if item.lateral else outer
            columns = self.statement(item.subquery, parent)
            return [self.aliased(item.alias, None, columns)]
        if isinstance(item, ast.RangeFunction):
            # A function in FROM sees the items before it, LATERAL written or not.
            return [self.range_function(item, scope)]
        if isinstance(item, ast.JoinExpr):
            return self.join(item, scope, outer)
        if isinstance(item, ast.RangeTableSample):
            for expr in (*(item.args or ()), item.repeatable):
                if expr is not None:
                    self.use("TABLESAMPLE", self.expr(expr, scope), "other", expr)
            return self.from_item(item.relation, scope, outer)
        # XMLTABLE, JSON_TABLE, ...: any column may come from anything the item reads.
        flow = union(self.expr(c, scope) for c in children(item))
        alias = getattr(item, "alias", None)
        return [Item(alias.aliasname if alias else None, None, [], flow)]

    def join(self, join: Any, scope: Scope, outer: Scope) -> list[Item]:
        left = self.from_item(join.larg, scope, outer)
        scope.items.extend(left)  # LATERAL on the right sees the left
        right = self.from_item(join.rarg, scope, outer)
        del scope.items[len(scope.items) - len(left) :]
        both = Scope(items=[*left, *right], parent=scope)
        using = string_list(join.usingClause)
        if join.isNatural:
            right_names = {n for i in right for n, _ in i.columns}
            using = [n for i in left for n, _ in i.columns if n in right_names]
        merged: list[tuple[str, Flow]] = []
        for name in using:
            flows = [Scope(side).resolve([name]) or EMPTY for side in (left, right)]
            shown = f"USING ({name})"
            self.use("JOIN", flows[0], "equality", shown, flows[1])
            self.use("JOIN", flows[1], "equality", shown, flows[0])
            merged.append((name, union(flows)))
        if join.quals is not None:
            self.condition(join.quals, both, "JOIN")
        if join.alias is None and not using:
            return [*left, *right]
        rest = [(n, f) for i in (*left, *right) for n, f in i.columns if n not in using]
        vague = [i.unknown for i in (*left, *right) if i.unknown]
        name = str(join.alias.aliasname) if join.alias is not None else ""
        joined = Item(name, None, merged + rest, union(vague) if vague else None)
        if join.alias is not None:
            columns = [ResultColumn(n, f) for n, f in joined.columns]
            return [self.aliased(join.alias, None, columns, vague=joined.unknown)]
        # USING without an alias: the merged names, and each side still by its own name.
        return [Item(None, None, merged), *left, *right]

    def aliased(
        self,
        alias: Any,
        default: str | None,
        columns: Sequence[ResultColumn],
        vague: Flow | None = None,
    ) -> Item:
        name = alias.aliasname if alias is not None else default
        renamed = string_list(alias.colnames) if alias is not None else []
        out: list[tuple[str, Flow]] = []
        for i, column in enumerate(columns):
            label = renamed[i] if i < len(renamed) else column.name
            step = Step(label=f"{name}.{label}" if name else label, transform=False)
            out.append((label, through(column.flow, step)))
        return Item(name, None, out, vague)

    def range_var(self, rv: Any, scope: Scope) -> Item:
        name, schema = rv.relname, rv.schemaname
        if schema is None and (cte := scope.cte(name)) is not None:
            columns = [ResultColumn(n, f) for n, f in cte]
            return self.aliased(rv.alias, name, columns)
        relation = self.catalog.relation(schema, name)
        shown = f"{schema}.{name}" if schema else name
        if relation is None:
            reason = f"relation {shown} is not in the catalog"
            flow = self.note(reason, Source(schema or ANY, name, ANY))
            return Item(rv.alias.aliasname if rv.alias else name, schema, [], flow)
        if relation.definition is not None:
            viewed = self.view(relation.schema, relation.name, relation.definition)
            if viewed is None:
                vague = unknown_flow(f"view {relation.schema}.{relation.name} is not followed")
                item = Item(rv.alias.aliasname if rv.alias else name, schema, [], vague)
                return item
            named = [
                ResultColumn(n, viewed[i].flow if i < len(viewed) else EMPTY)
                for i, n in enumerate(relation.columns)
            ]
            item = self.aliased(rv.alias, relation.name, named)
        else:
            flows: list[tuple[str, Flow]] = [
                (c, {Source(relation.schema, relation.name, c): ()}) for c in relation.columns
            ]
            item = self.aliased(rv.alias, relation.name, [ResultColumn(n, f) for n, f in flows])
            if rv.alias is None:
                item.columns = flows  # the table's own columns: no step to show
        if rv.alias is None:
            item.schema = relation.schema
        return item

    def view(self, schema: str, name: str, definition: str) -> list[ResultColumn] | None:
        """The result columns of a view's definition; None when it cannot be followed."""
        key = (schema, name)
        if key in self.active or self.depth >= MAX_DEPTH:
            self.note(f"view {schema}.{name} is nested too deep to follow")
            return None
        try:
            (raw,) = parse_sql(definition)
        except Exception:
            self.note(f"the definition of view {schema}.{name} cannot be read")
            return None
        child = _Analyzer(self.catalog, self.found, self.depth + 1, False, self.active | {key})
        return child.statement(raw.stmt)

    def range_function(self, item: Any, scope: Scope) -> Item:
        columns: list[ResultColumn] = []
        vague: list[Flow] = []
        for entry in item.functions or ():
            call = entry[0] if isinstance(entry, list | tuple) else entry
            if not isinstance(call, ast.FuncCall):
                vague.append(self.expr(call, scope))
                continue
            args = self.arguments(call, scope)
            # Its arguments decide which and how many rows it yields: a clause use.
            self.use("FROM function", args, "other", call)
            body = self.function_body(call, args)
            if body is None:
                vague.append(through(args, Step(node=call)))
            else:
                flows = [through(union([args, c.flow]), Step(node=call)) for c in body]
                columns += [ResultColumn(c.name, f) for c, f in zip(body, flows, strict=True)]
        if item.ordinality:
            columns.append(ResultColumn("ordinality", EMPTY))
        default = None
        if len(item.functions or ()) == 1 and not columns:
            call = item.functions[0][0]
            default = column_name(call)
        alias = item.alias
        name = alias.aliasname if alias is not None else default
        if vague and not columns and alias is not None and alias.colnames:
            # A built-in's output columns, named by the alias: each from its arguments.
            flow = union(vague)
            columns = [ResultColumn(n, flow) for n in string_list(alias.colnames)]
            return Item(name, None, [(c.name, c.flow) for c in columns], flow)
        built = self.aliased(alias, name, columns, union(vague) if vague else None)
        if vague and not columns and name is not None:
            # `SELECT x FROM generate_series(1, 3) x`: the function's one column has its name.
            built.columns = [(name, union(vague))]
        return built

    # ---- expressions ---------------------------------------------------------------

    def resolve(self, names: list[str], scope: Scope) -> Flow:
        flow = resolve_in(names, scope)
        if flow is not None:
            return flow
        if self.params and len(names) == 1:
            return EMPTY  # a SQL function's parameter: the call's arguments carry it
        shown = ".".join(names)
        return self.note(f"column {shown} cannot be resolved")

    def expr(self, node: Any, scope: Scope) -> Flow:
        if node is None or isinstance(node, ast.A_Const | ast.ParamRef | ast.String):
            return EMPTY
        if isinstance(node, ast.ColumnRef):
            return self.resolve(names_of(node.fields), scope)
        if isinstance(node, ast.SelectStmt):
            return union(c.flow for c in self.statement(node, scope))
        if isinstance(node, ast.SubLink):
            flow = self.expr(node.testexpr, scope)
            columns = self.statement(node.subselect, scope)
            if node.subLinkType != SubLinkType.EXISTS_SUBLINK:
                flow = union([flow, *(c.flow for c in columns)])
            return through(flow, Step(node=node))
        if isinstance(node, ast.FuncCall):
            return self.call(node, scope)
        flow = union(self.expr(child, scope) for child in children(node))
        return through(flow, Step(node=node)) if isinstance(node, _SHOWN) else flow

    def arguments(self, call: Any, scope: Scope) -> Flow:
        """The arguments, an aggregate's ORDER BY and FILTER too (both also choose or order
        the rows it reads: clause uses)."""
        parts = [self.expr(a, scope) for a in call.args or ()]
        for sort in call.agg_order or ():
            flow = self.expr(sort.node, scope)
            self.use("aggregate ORDER BY", flow, "other", sort.node)
            parts.append(flow)
        if call.agg_filter is not None:
            self.condition(call.agg_filter, scope, "aggregate FILTER")
            parts.append(self.expr(call.agg_filter, scope))
        return union(parts)

    def call(self, call: Any, scope: Scope) -> Flow:
        flow = self.arguments(call, scope)
        name = names_of(call.funcname)[-1]
        if name in SQL_TEXT_FUNCTIONS:
            reason = f"{name}() reads data given as SQL text or by name"
            flow = union([flow, self.opaque(f"{name}()", reason)])
        if call.over is not None:
            self.window(call.over, scope)
            window = call.over
            keys = [*(window.partitionClause or ()), *(s.node for s in window.orderClause or ())]
            named = window.name or window.refname
            if named and (base := scope.window(named)) is not None:  # OVER w, OVER (w ...)
                keys += [*(base.partitionClause or ()), *(s.node for s in base.orderClause or ())]
            flow = union([flow, *(self.expr(e, scope) for e in keys)])
        set_returning: list[bool] = []
        body = self.function_body(call, flow, set_returning)
        if name in SET_RETURNING or set_returning:
            # How many rows come back depends on its arguments: a clause use.
            self.use("set-returning function", flow, "other", call)
        if body:
            flow = union([flow, *(c.flow for c in body)])
        return through(flow, Step(node=call))

    def function_body(
        self, call: Any, args: Flow, set_returning: list[bool] | None = None
    ) -> list[ResultColumn] | None:
        """The result columns of the SQL function `call` reaches, merged over candidates;
        None for a built-in (its output comes from its arguments). `set_returning` gets
        True when a candidate returns SETOF."""
        names = names_of(call.funcname)
        schema = names[-2] if len(names) > 1 else None
        found = self.catalog.functions(schema, names[-1])
        shown = ".".join(names)
        if found is None:
            self.note(
                f"function {shown} is not in the catalog; its result is taken as its arguments"
            )
            return None
        if set_returning is not None and any(f.returns_set for f in found):
            set_returning.append(True)
        users = [f for f in found if not f.builtin]
        if not users:
            return None
        merged: list[ResultColumn] = []
        for function in users:
            key = (function.schema, function.name)
            if function.language != "sql" or not function.body:
                if args:
                    self.note(
                        f"function {function.schema}.{function.name} ({function.language}) "
                        "cannot be seen into; its result is taken as its arguments"
                    )
                continue
            if key in self.active or self.depth >= MAX_DEPTH:
                reason = f"function {function.schema}.{function.name} nests too deep to follow"
                merged.append(ResultColumn(function.name, self.note(reason)))
                continue
            columns = self.sql_body(function.schema, function.name, function.body, key)
            merged = merge_columns(merged, columns)
        return merged or None

    def sql_body(
        self, schema: str, name: str, body: str, key: tuple[str, str]
    ) -> list[ResultColumn]:
        try:
            statements = parse_sql(body)
        except Exception:
            reason = f"the body of function {schema}.{name} cannot be read"
            return [ResultColumn(name, self.note(reason))]
        child = _Analyzer(self.catalog, self.found, self.depth + 1, True, self.active | {key})
        last: list[ResultColumn] = []
        for raw in statements:
            last = child.statement(raw.stmt)
        return last

    # ---- clauses -------------------------------------------------------------------

    def condition(self, node: Any, scope: Scope, clause: str) -> None:
        """A filter or join condition: AND/OR/NOT looked through; comparisons of a column
        with a constant or parameter, and IS NULL, are told apart."""
        if isinstance(node, ast.BoolExpr):
            for arg in node.args or ():
                self.condition(arg, scope, clause)
            return
        if isinstance(node, ast.NullTest):
            self.use(clause, self.expr(node.arg, scope), "null", node)
            return
        if isinstance(node, ast.A_Expr) and is_equality(node):
            lflow = self.expr(node.lexpr, scope)
            right: Any = node.rexpr
            if isinstance(right, list | tuple):  # IN (a, b, ...)
                rflow = union(self.expr(v, scope) for v in right)
            else:
                rflow = self.expr(right, scope)
            if not rflow or not lflow:
                # Compared with values the reader supplies (constants, parameters, any
                # expression of them): a lookup of the other side.
                self.use(clause, lflow or rflow, "lookup", node)
                return
            if node.kind != A_Expr_Kind.AEXPR_IN and not isinstance(right, list | tuple):
                self.use(clause, lflow, "equality", node, rflow)
                self.use(clause, rflow, "equality", node, lflow)
                return
        self.use(clause, self.expr(node, scope), "other", node)

    # ---- writes --------------------------------------------------------------------

    def dml(self, stmt: Any, outer: Scope) -> list[ResultColumn]:
        scope = self.with_clause(stmt.withClause, outer)
        target = self.range_var(stmt.relation, scope)
        written: dict[str, Flow] = {}
        inner = Scope(parent=scope)
        if isinstance(stmt, ast.InsertStmt):
            names = [t.name for t in stmt.cols or ()] or [n for n, _ in target.columns]
            if stmt.selectStmt is not None:
                values = self.statement(stmt.selectStmt, scope)
                for name, column in zip(names, values, strict=False):
                    written[name] = column.flow
            conflict = stmt.onConflictClause
            if conflict is not None:
                self.on_conflict(conflict, target, written, inner)
        else:
            extra = stmt.fromClause if isinstance(stmt, ast.UpdateStmt) else stmt.usingClause
            inner.items.append(target)
            for item in extra or ():
                inner.items.extend(self.from_item(item, inner, scope))
            if isinstance(stmt, ast.UpdateStmt):
                for t in stmt.targetList or ():
                    written[t.name] = union([written.get(t.name, EMPTY), self.expr(t.val, inner)])
            if stmt.whereClause is not None:
                self.condition(stmt.whereClause, inner, "WHERE")
        self.write(
            relation_name(stmt.relation),
            [ResultColumn(n, f) for n, f in written.items()],
        )
        # RETURNING sees the row as written: a column holds what was put into it too.
        target.columns = [(n, union([f, written.get(n, EMPTY)])) for n, f in target.columns]
        if target not in inner.items:
            inner.items.append(target)
        return self.targets(returning(stmt), inner)

    def on_conflict(
        self, conflict: Any, target: Item, written: dict[str, Flow], inner: Scope
    ) -> None:
        """DO UPDATE sees the existing row and `excluded`, the row proposed for insertion;
        its WHERE decides which rows change (and come back in RETURNING)."""
        proposed = [(n, union([f, written.get(n, EMPTY)])) for n, f in target.columns]
        scope = Scope([target, Item("excluded", None, proposed, target.unknown)], parent=inner)
        for t in conflict.targetList or ():
            flow = self.expr(t.val, scope)
            written[t.name] = union([written.get(t.name, EMPTY), flow])
        if conflict.whereClause is not None:
            self.condition(conflict.whereClause, scope, "WHERE")

    def merge(self, stmt: Any, outer: Scope) -> list[ResultColumn]:
        scope = self.with_clause(stmt.withClause, outer)
        inner = Scope(parent=scope)
        inner.items.append(self.range_var(stmt.relation, scope))
        inner.items.extend(self.from_item(stmt.sourceRelation, inner, scope))
        self.condition(stmt.joinCondition, inner, "JOIN")
        touched = union(i.whole() for i in inner.items)
        for clause in stmt.mergeWhenClauses or ():
            if clause.condition is not None:
                self.condition(clause.condition, inner, "WHERE")
            for t in clause.targetList or ():
                touched = union([touched, self.expr(t.val, inner)])
        self.write(relation_name(stmt.relation), [ResultColumn(ANY, touched)])
        return [
            ResultColumn(c.name, union([c.flow, touched]))
            for c in self.targets(returning(stmt), inner)
        ]

    def copy(self, stmt: Any, scope: Scope) -> list[ResultColumn]:
        if stmt.is_from:
            return []
        columns = self.copy_out(stmt, scope)
        if stmt.filename is not None or stmt.is_program:
            # Into a server file or a program: stored where no rule applies (a write).
            into = "a program" if stmt.is_program else f"server file {stmt.filename}"
            self.write(into, [ResultColumn(ANY, union(c.flow for c in columns))])
            return []
        return columns

    def copy_out(self, stmt: Any, scope: Scope) -> list[ResultColumn]:
        if stmt.query is not None:
            return self.statement(stmt.query, scope)
        item = self.range_var(stmt.relation, scope)
        wanted = string_list(stmt.attlist)
        if not wanted:
            return [ResultColumn(n, f) for n, f in item.columns] + (
                [ResultColumn(ANY, item.unknown)] if item.unknown else []
            )
        return [ResultColumn(n, item.column(n) or self.resolve([n], Scope([item]))) for n in wanted]


def analyze_statement(stmt: Any, catalog: Catalog) -> Lineage:
    """The lineage of one parsed statement (`pglast.parse_sql(...)[i].stmt`)."""
    analyzer = _Analyzer(catalog)
    try:
        columns = analyzer.statement(stmt)
    except RecursionError:
        # Nothing of it is known: every column and every clause may read anything.
        reason = "the statement nests too deep to follow"
        use = ClauseUse("the statement", UNKNOWN, "other", Step(label=reason))
        return Lineage((ResultColumn(ANY, unknown_flow(reason)),), (use,), (), (reason,))
    found = analyzer.found
    return Lineage(tuple(columns), tuple(found.uses), tuple(found.writes), tuple(found.unresolved))


def analyze(sql: str, catalog: Catalog) -> list[Lineage]:
    """The lineage of each statement of `sql` (raises pglast's ParseError for non-SQL)."""
    return [analyze_statement(raw.stmt, catalog) for raw in parse_sql(sql)]
