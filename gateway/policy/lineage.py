"""Inference refusals: a masked column must not select, join, group or order rows.

Pure and sans-I/O. A column rule masks a value where a result returns it; a statement that
uses the column to choose rows (`WHERE card LIKE '4111%'`), to order them (`ORDER BY card`),
to group them (`GROUP BY left(card, 1)` with counts) or to pick one row per value (`DISTINCT
ON`, a window's PARTITION BY/ORDER BY) lets a reader learn it bit by bit without ever seeing
it. Given a statement's lineage (`shared.lineage`) and the column rules of the session, this
module decides whether it must be refused, and says why.

Rules:
1. Only masking rules with `columns` count (detectors alone mask what they find in output,
   not columns). A source matches a rule as the agent matches a result column: `col`,
   `table.col` or `schema.table.col` globs. A source the lineage could not name (`ANY`
   parts: a relation or column the catalog lacks) matches every rule (fail closed).
2. Every use of a masked source in WHERE, JOIN, GROUP BY, HAVING, ORDER BY, DISTINCT (ON), a
   window's PARTITION BY/ORDER BY or LIMIT/OFFSET refuses the statement, also inside
   subqueries, views and SQL functions the statement reaches. Except (when every rule that
   masks the column allows it):
   - `allow_lookup: true` on the rule: the column itself compared for equality (`=`, `<>`,
     IN, `= ANY`, IS [NOT] DISTINCT FROM) to values that read no column: parameters,
     constants and expressions of them (a lookup by a value the reader already knows), and
     `IS [NOT] NULL`;
   - `strategy: token` with whole-column masking: the column itself as a join key equal to
     another column masked by such a rule, or as a plain GROUP BY / PARTITION BY /
     DISTINCT (ON) key. Equal values give equal tokens, so these reveal nothing the tokens
     in a result do not already show.
3. A write that copies a masked column (CREATE TABLE AS, SELECT INTO, INSERT ... SELECT,
   UPDATE ... SET, MERGE) is refused unless every rule that masks the source also masks
   the column written (`INSERT INTO orders (card_used) SELECT card ...` under a rule on
   both): otherwise the copy would be read back unmasked.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from gateway.policy.masking import MaskingRuleConfig
from shared.lineage import ANY, ClauseUse, Lineage, Source

MAX_SHOWN = 80  # characters of a clause quoted in a refusal
MAX_MATCHED = 4096  # sources whose matching rules one ColumnRules remembers


def _part_matches(pattern: str, value: str) -> bool:
    return value == ANY or fnmatch.fnmatchcase(value.lower(), pattern)


def source_matches(pattern: str, source: Source) -> bool:
    """Rule 1: `column`, `table.column` or `schema.table.column` (globs, lower case)."""
    parts = pattern.split(".")
    values = (source.schema, source.table, source.column)[-len(parts) :]
    return all(_part_matches(p, v) for p, v in zip(parts, values, strict=True))


@dataclass(frozen=True, slots=True)
class ClauseRefusal:
    use: ClauseUse
    rule: str

    @property
    def reason(self) -> str:
        clause = self.use.step.render()
        if len(clause) > MAX_SHOWN:
            clause = clause[: MAX_SHOWN - 3] + "..."
        source = self.use.source
        if ANY in (source.table, source.column):
            return (
                f"policy: {self.use.clause} ({clause}) reads {source}, which lineage cannot "
                f"resolve, and masking rule {self.rule!r} may cover it; statement refused"
            )
        return (
            f"policy: masked column {source} (rule {self.rule!r}) is used in "
            f"{self.use.clause} ({clause}), which would reveal its values; "
            "select it (masked) instead of filtering, joining, grouping or ordering on it"
        )


@dataclass(frozen=True, slots=True)
class WriteRefusal:
    target: str
    column: str
    source: Source
    rule: str

    @property
    def reason(self) -> str:
        if self.column == ANY:  # a file, a program, a row of unknown columns
            into = f"{self.target}, where no rule masks it"
        else:
            into = f"{self.target}.{self.column}, which the rule does not mask"
        return (
            f"policy: this statement copies masked column {self.source} (rule {self.rule!r}) "
            f"into {into}; masked data may not be copied"
        )


@dataclass(frozen=True, slots=True)
class ColumnRules:
    """The column masking rules of one session (rule 1)."""

    rules: tuple[MaskingRuleConfig, ...] = ()
    # source -> the rules that mask it: statements of a session read the same columns
    _matched: dict[Source, list[MaskingRuleConfig]] = field(
        default_factory=dict, compare=False, repr=False
    )

    @classmethod
    def of(cls, rules: Iterable[MaskingRuleConfig]) -> ColumnRules:
        return cls(tuple(r for r in rules if r.columns))

    @property
    def empty(self) -> bool:
        return not self.rules

    def rules_for(self, source: Source) -> list[MaskingRuleConfig]:
        found = self._matched.get(source)
        if found is None:
            found = [r for r in self.rules if any(source_matches(p, source) for p in r.columns)]
            if len(self._matched) < MAX_MATCHED:
                self._matched[source] = found
        return found

    def rule_for(self, source: Source) -> MaskingRuleConfig | None:
        """The first rule that masks `source`, or None."""
        found = self.rules_for(source)
        return found[0] if found else None

    def _token(self, source: Source) -> bool:
        """Every rule on `source` masks it whole with tokens."""
        found = self.rules_for(source)
        return bool(found) and all(_whole_token(r) for r in found)

    def allowed(self, use: ClauseUse, rule: MaskingRuleConfig) -> bool:
        """Rule 2's exceptions."""
        if use.kind in ("lookup", "null"):
            return rule.allow_lookup
        if use.kind == "group":
            return _whole_token(rule)
        if use.kind == "equality":
            return (
                _whole_token(rule)
                and bool(use.other)
                and all(s.known and self._token(s) for s in use.other)
            )
        return False

    def refusals(self, lineages: Sequence[Lineage]) -> list[ClauseRefusal]:
        """Every use some rule on its source does not allow (each rule must allow it)."""
        out: list[ClauseRefusal] = []
        for lineage in lineages:
            for use in lineage.uses:
                for rule in self.rules_for(use.source):
                    if not self.allowed(use, rule):
                        out.append(ClauseRefusal(use, rule.name))
                        break
        return out

    def write_refusals(self, lineages: Sequence[Lineage]) -> list[WriteRefusal]:
        """Rule 3: copies of masked sources into columns their rules do not mask."""
        out: list[WriteRefusal] = []
        for lineage in lineages:
            for write in lineage.writes:
                schema, _, table = write.target.rpartition(".")
                for column in write.columns:
                    target = Source(schema or ANY, table, column.name)
                    covering = {r.name for r in self.rules_for(target)}
                    for source in sorted(column.sources):
                        for rule in self.rules_for(source):
                            if column.name == ANY or rule.name not in covering:
                                out.append(
                                    WriteRefusal(write.target, column.name, source, rule.name)
                                )
                                break
        return out


def _whole_token(rule: MaskingRuleConfig) -> bool:
    return rule.strategy == "token" and not (rule.detectors or rule.regex)
