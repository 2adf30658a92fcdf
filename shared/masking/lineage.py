"""What a statement's lineage means for the agent's column masking (sans-I/O, pure).

`statement_mask(lineage, spec)` turns `shared.lineage.Lineage` into a `StatementMask`: for
each result column, the masked table columns whose value it carries as it is (`direct`:
masked by the rule's own strategy, as if the result column were that table column) and
whether it derives from a masked column in any other way, or from it and other columns
(`derived`: `reverse(card)`, a whole row; masked whole, by redaction, whatever the rule's
strategy: a partial mask of `reverse(card)` would show the card's first digits). Rules:

1. A source matches a rule when one of the rule's column globs (`col`, `table.col`,
   `schema.table.col`, lower case) matches it; a source part the lineage could not name
   (`ANY`) matches every glob (fail closed).
2. A result column the lineage cannot line up with the server's RowDescription (a column
   count that differs: `*` over a relation the catalog lacks, a utility statement) takes
   the union of every column's sources (`StatementMask.fallback`).
3. No lineage at all (`UNRESOLVED`: text that does not parse, a FETCH from a cursor not
   declared on this session): every column is derived from every masked column.
4. `notice`: one line naming what could not be resolved, when that matters (an unresolved
   source matched a rule), for the client's NoticeResponse.
5. `reads`: the statement reads a masked column anywhere; the texts of its errors and
   notices are withheld (a failed cast quotes the value).
6. `tainted`: tables this session filled with data from a masked column (CREATE TABLE AS,
   SELECT INTO, INSERT ... SELECT: `tainted_writes`); every column read from them is
   derived from a masked column.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass

from shared.lineage import ANY, Lineage, ResultColumn, Source
from shared.masking.spec import MaskRule, MaskSpec, Strategy


@dataclass(frozen=True, slots=True)
class ColumnMask:
    direct: tuple[str, ...] = ()  # `table.col`, `schema.table.col` of masked sources
    derived: bool = False

    @property
    def masked(self) -> bool:
        return self.derived or bool(self.direct)


_PLAIN = ColumnMask()
_DERIVED = ColumnMask(derived=True)


@dataclass(frozen=True, slots=True)
class StatementMask:
    """Per result column, in RowDescription order; `fallback` for a column count that does
    not match (rule 2). `copy`: for COPY ... TO, how its rows read (`text`/`csv`, the
    delimiter, whether a header row comes first), None when they cannot be read."""

    columns: tuple[ColumnMask, ...] = ()
    fallback: ColumnMask = _PLAIN
    notice: str | None = None
    copy: tuple[str, str, bool] | None = None
    # The statement reads a masked column anywhere (results, clauses, writes): its errors
    # and notices may quote a masked value (`select card::int`).
    reads: bool = False

    def for_width(self, width: int) -> tuple[ColumnMask, ...]:
        if width == len(self.columns):
            return self.columns
        return (self.fallback,) * width

    @property
    def masked(self) -> bool:
        return self.fallback.masked or any(c.masked for c in self.columns)


UNRESOLVED = StatementMask((), _DERIVED, reads=True)
NOTHING = StatementMask()
UNPARSED = StatementMask((), _DERIVED)  # text the server cannot parse either: reads nothing


def _part(pattern: str, value: str) -> bool:
    return value == ANY or fnmatch.fnmatchcase(value.lower(), pattern)


def source_matches(pattern: str, source: Source) -> bool:
    parts = pattern.split(".")
    values = (source.schema, source.table, source.column)[-len(parts) :]
    return all(_part(p, v) for p, v in zip(parts, values, strict=True))


def column_rules(spec: MaskSpec) -> tuple[MaskRule, ...]:
    return tuple(r for r in spec.rules if r.columns)


def derived_rule(rule: MaskRule) -> MaskRule:
    """The rule a derived value is masked by: whole, redacted (a transformed value is not
    the column's own; partial masks and detectors do not apply to it)."""
    return MaskRule(rule.name, Strategy.REDACT, rule.columns)


def _column(
    column: ResultColumn, rules: tuple[MaskRule, ...], tainted: frozenset[str]
) -> tuple[ColumnMask, bool]:
    """The column's mask and whether an unresolved source matched."""
    direct: list[str] = []
    derived = False
    unresolved = False
    for source in column.sources:
        if source.table.lower() in tainted:
            derived = True  # a copy of masked data made in this session
            continue
        if not any(source_matches(g.lower(), source) for r in rules for g in r.columns):
            continue
        if not source.known:
            unresolved = True
            derived = True
        elif column.direct(source) and len(column.flow) == 1:
            direct += (f"{source.table}.{source.column}", source.qualified)
        else:
            derived = True
    # A value of several sources (a whole row, a set operation's column) is none of them as
    # it is: no one rule's strategy fits it.
    if derived:
        return _DERIVED, unresolved
    return (ColumnMask(tuple(direct)) if direct else _PLAIN), unresolved


def tainted_writes(lineage: Lineage, spec: MaskSpec) -> set[str]:
    """The tables (names as written, lower case, unqualified) a statement fills with data
    derived from a masked column: reading them later in the session is reading it."""
    rules = column_rules(spec)
    return {
        w.target.rsplit(".", 1)[-1].lower()
        for w in lineage.writes
        if any(
            source_matches(g.lower(), s)
            for c in w.columns
            for s in c.sources
            for r in rules
            for g in r.columns
        )
    }


def _union(columns: Iterable[ColumnMask]) -> ColumnMask:
    direct: list[str] = []
    for c in columns:
        if c.derived:
            return _DERIVED
        direct += c.direct
    # A column lined up with no particular source may be any of them: none is its own.
    return _DERIVED if direct else _PLAIN


def statement_mask(
    lineage: Lineage,
    spec: MaskSpec,
    copy: tuple[str, str, bool] | None = None,
    tainted: frozenset[str] = frozenset(),
) -> StatementMask:
    rules = column_rules(spec)
    if not rules:
        return StatementMask(copy=copy)
    masks: list[ColumnMask] = []
    unresolved = False
    for column in lineage.columns:
        mask, unknown = _column(column, rules, tainted)
        masks.append(mask)
        unresolved = unresolved or unknown
    sources = [s for u in lineage.uses for s in (u.source, *u.other)]
    sources += [s for w in lineage.writes for c in w.columns for s in c.sources]
    sources += [s for c in lineage.columns for s in c.sources]
    reads = any(
        s.table.lower() in tainted or source_matches(g.lower(), s)
        for s in sources
        for r in rules
        for g in r.columns
    )
    notice = None
    if unresolved:
        reasons = "; ".join(dict.fromkeys(lineage.unresolved)) or "part of the statement"
        notice = f"wardgate masking: {reasons[:300]}: the columns it may feed are masked whole"
    return StatementMask(tuple(masks), _union(masks), notice, copy, reads)
