"""What lineage analysis answers, and the catalog it asks: plain frozen data, no parsing."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

ANY = "*"  # a part of a source the analysis could not name: it may be anything


@dataclass(frozen=True, slots=True, order=True)
class Source:
    """One table column data may come from; a part equal to `ANY` is unknown (fail closed:
    a rule that could match it must treat it as matched)."""

    schema: str
    table: str
    column: str

    @property
    def known(self) -> bool:
        return ANY not in (self.schema, self.table, self.column)

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.table}.{self.column}"

    def __str__(self) -> str:
        return f"{self.table}.{self.column}"


UNKNOWN = Source(ANY, ANY, ANY)  # could be any column of any table


@dataclass(frozen=True, slots=True)
class Step:
    """One link of a path from a result column back to its source: an expression (`node`,
    rendered as SQL only when a path is shown) or a label. `transform`: the value changes
    here; a path with no transforming step carries the source's value as it is."""

    node: Any = field(default=None, compare=False)
    label: str = ""
    transform: bool = True

    def render(self) -> str:
        if self.label:
            return self.label
        try:
            from pglast.stream import RawStream

            return str(RawStream()(self.node))
        except Exception:  # a node the deparser does not take: name its kind
            return type(self.node).__name__


Trail = tuple[Step, ...]
# Where a value comes from: each source with one path to it (outermost step first).
Flow = Mapping[Source, Trail]


def direct(trail: Trail) -> bool:
    """The value is the source's own, unchanged (through views, CTEs, subqueries)."""
    return not any(s.transform for s in trail)


@dataclass(frozen=True, slots=True)
class ResultColumn:
    """One column a statement returns (or writes), with every source it derives from."""

    name: str
    flow: Flow

    @property
    def sources(self) -> frozenset[Source]:
        return frozenset(self.flow)

    def direct(self, source: Source) -> bool:
        return source in self.flow and direct(self.flow[source])

    def path(self, source: Source) -> str:
        """`hex_out <- encode(card, 'hex') <- accounts.card`."""
        parts = [self.name]
        for step in self.flow[source]:
            text = step.render()
            if text != parts[-1]:
                parts.append(text)
        if str(source) != parts[-1]:
            parts.append(str(source) if source.known else f"{source} (unresolved)")
        return " <- ".join(parts)


UseKind = Literal["lookup", "null", "equality", "group", "other"]


@dataclass(frozen=True, slots=True)
class ClauseUse:
    """A source read by a clause that filters, joins, groups or orders rows.

    `kind` says how, for the rules that allow some uses: `lookup` (the column itself
    compared for equality, with `=`, `<>`, IN, `= ANY`, IS [NOT] DISTINCT FROM, to values
    that read no column: constants, parameters, expressions of them), `null` (`IS [NOT]
    NULL` of the column itself), `equality` (the column itself equal to another column
    itself: a join key), `group` (the column itself as a GROUP BY / PARTITION BY / DISTINCT
    ON key), `other` (anything else: LIKE, ranges, functions of it, ORDER BY)."""

    clause: str  # WHERE, JOIN, GROUP BY, HAVING, ORDER BY, DISTINCT ON, window PARTITION BY, ...
    source: Source
    kind: UseKind
    step: Step = field(compare=False)  # the clause's expression, for messages
    other: frozenset[Source] = field(default=frozenset(), compare=False)  # equality's other side


@dataclass(frozen=True, slots=True)
class Write:
    """A statement that stores data read from sources (CREATE TABLE AS, SELECT INTO,
    INSERT ... SELECT, UPDATE ... SET): the target and what goes into each column."""

    target: str
    columns: tuple[ResultColumn, ...]


@dataclass(frozen=True, slots=True)
class Lineage:
    """The lineage of one statement.

    `columns`: the result columns, in order (empty for statements that return no rows);
    `uses`: every source the statement's row-selecting clauses read; `writes`: data it
    stores elsewhere; `unresolved`: why part of it could not be followed (the parts concerned
    carry `ANY` sources)."""

    columns: tuple[ResultColumn, ...] = ()
    uses: tuple[ClauseUse, ...] = ()
    writes: tuple[Write, ...] = ()
    unresolved: tuple[str, ...] = ()


# ---- the catalog -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Relation:
    """A table, view, materialized view or foreign table; `definition`: a view's SELECT
    (pg_get_viewdef), whose result columns feed the view's columns in order."""

    schema: str
    name: str
    columns: tuple[str, ...]
    definition: str | None = None


@dataclass(frozen=True, slots=True)
class Function:
    """One pg_proc entry. `body` is a LANGUAGE sql function's text (prosrc); a user function
    in another language cannot be seen into."""

    schema: str
    name: str
    language: str
    builtin: bool
    body: str | None = None
    returns_set: bool = False  # SETOF: its arguments decide how many rows come back


class Catalog(Protocol):
    """What lineage needs from the server's catalog; names as the server reads them
    (unquoted identifiers folded to lower case)."""

    def relation(self, schema: str | None, name: str) -> Relation | None:
        """The relation `name` (unqualified: the first found on the session's search_path);
        None when there is none, or the catalog cannot tell."""

    def functions(self, schema: str | None, name: str) -> tuple[Function, ...] | None:
        """Every function of that name that a call may reach; () when there is none;
        None when the catalog cannot tell."""


@dataclass
class MemoryCatalog:
    """A `Catalog` held in memory: relations and functions by (schema, name), looked up
    unqualified through `search_path`. Tests use it; so can a caller that already holds
    the answers."""

    relations: dict[tuple[str, str], Relation] = field(default_factory=dict)
    function_defs: dict[tuple[str, str], tuple[Function, ...]] = field(default_factory=dict)
    search_path: tuple[str, ...] = ("pg_catalog", "public")

    def add(self, relation: Relation) -> MemoryCatalog:
        self.relations[(relation.schema, relation.name)] = relation
        return self

    def add_function(self, function: Function) -> MemoryCatalog:
        key = (function.schema, function.name)
        self.function_defs[key] = (*self.function_defs.get(key, ()), function)
        return self

    def relation(self, schema: str | None, name: str) -> Relation | None:
        for s in (schema,) if schema else self.search_path:
            if (s, name) in self.relations:
                return self.relations[(s, name)]
        return None

    def functions(self, schema: str | None, name: str) -> tuple[Function, ...] | None:
        schemas = (schema,) if schema else self.search_path
        return tuple(f for s in schemas for f in self.function_defs.get((s, name), ()))
