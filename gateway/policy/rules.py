"""Guardrails: declarative allow/deny rules over who, where and what a statement is.

Pure and sans-I/O: a `Policy` (parsed from the gateway config's `policy:` key), the
identity (`Subject`), a connection name and the `Facts` of each statement in, one
`Decision` with its reason and the rules behind it out. The rules it keeps:

1. A rule *applies* to a session when every identity and connection condition it has
   matches: `users` (globs), `groups` (any), `roles` (Wardgate roles, any), `identity`
   (`person` or `machine`), `connections` (globs). An absent condition matches everyone.
2. A rule *matches* a statement when every statement condition it has matches: `kinds`,
   `tables` (globs), `functions` (globs), `flags`. A deny rule is generous, an allow rule
   strict: a deny rule matches when *any* kind, table or function of the statement is
   listed and *any* listed flag is set; an allow rule only when *all* of the statement's
   kinds, tables and functions are listed and every flag it carries is listed (an allow
   rule without flags never lets a flagged statement through: outside-data access, where-
   less writes and row locks must be allowed by name). A statement whose effects cannot be
   read (`opaque`: DO blocks, dynamic SQL) meets every kind and table condition of a deny
   rule and none of an allow rule. A call of a VOLATILE user function (`Facts.writers`, from
   the catalog: `gateway.policy.functions`) makes the statement a `write`, except for an
   allow rule whose `volatile_functions` globs name every such function it calls.
3. Table globs are matched without regard to case. A pattern without a dot matches the
   table in any schema; `schema.table` matches that schema, and also an unqualified name
   (its schema depends on the search_path, which the gateway does not know).
4. Deny wins: a statement matched by any applicable deny rule is denied, with that rule's
   message. Otherwise a matching `review` rule holds it for approval by others (its
   `review:` terms, `gateway.policy.approval`; it matches as generously as a deny rule).
   Otherwise an applicable allow rule that matches allows it. Otherwise it is allowed,
   unless the connection is *guarded* (`guarded_connections` globs), where what no rule
   allows is denied. So: deny > review > allow.
5. A query string is denied when any of its statements is; otherwise it is held for review
   when any of its statements is (the first such statement's rule sets the terms, and the
   whole string waits: its statements run together or not at all). The reason names the
   statement.
6. On a connection whose statements the gateway cannot read (generic `tcp`), the session
   itself is refused (by its entry, `gateway/api/app.py`) when the connection is guarded,
   when a deny rule without statement conditions applies (it would deny everything), or
   when an applicable deny rule names the connection in its `connections`: the rule is
   meant for it and cannot be enforced there. Review rules count as deny rules here
   (time-boxed access requests are the way to such connections).
7. Text that cannot be parsed is denied on a guarded connection and wherever a deny or
   review rule applies (we cannot tell whether it would match); otherwise it passes, as the
   server will reject it anyway. A connection with no applicable rule that is not guarded is never
   parsed at all.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gateway.policy.approval import ReviewTerms
from gateway.policy.budgets import Budget
from gateway.policy.facts import FLAGS, KINDS, OUTSIDE_DATA_FLAGS, Facts, UnparsableSQL
from gateway.policy.facts import statement_facts as _statement_facts
from gateway.policy.grants import AccessPolicy
from gateway.policy.masking import MaskingRuleConfig
from gateway.policy.who import Subject as Subject  # re-exported: callers name it here
from gateway.policy.who import WhoMatch
from gateway.policy.who import glob as _glob

POLICY_SQLSTATE = "42501"  # insufficient_privilege, as for read-only refusals


class Match(WhoMatch):
    """Conditions of one rule; all given ones must hold, each list is any-of."""

    kinds: list[str] = Field(default_factory=list)  # read write ddl dcl transaction utility
    tables: list[str] = Field(default_factory=list)  # globs, any case, [schema.]table
    functions: list[str] = Field(default_factory=list)  # globs
    flags: list[str] = Field(default_factory=list)  # outside_data, where_less_write, ...
    # Allow rules only: VOLATILE user functions (globs: `schema.name`, or `name` in any
    # schema) whose calls this rule takes as reads (gateway/policy/functions.py).
    volatile_functions: list[str] = Field(default_factory=list)

    @field_validator("kinds")
    @classmethod
    def _kinds(cls, value: list[str]) -> list[str]:
        bad = [k for k in value if k not in KINDS]
        if bad:
            raise ValueError(f"unknown kinds {bad}: use {', '.join(KINDS)}")
        return value

    @field_validator("flags")
    @classmethod
    def _flags(cls, value: list[str]) -> list[str]:
        bad = [f for f in value if f not in FLAGS]
        if bad:
            raise ValueError(f"unknown flags {bad}: use {', '.join(sorted(FLAGS))}")
        return value

    @field_validator("tables", "functions", "volatile_functions")
    @classmethod
    def _lower(cls, value: list[str]) -> list[str]:
        return [v.lower() for v in value]


Effect = Literal["allow", "deny", "review"]


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    effect: Effect  # deny wins, then review, then allow
    message: str = ""  # what the client is told on a denial
    match: Match = Field(default_factory=Match)  # absent conditions match everything
    review: ReviewTerms | None = None  # effect review: who approves, how many, how long

    @model_validator(mode="after")
    def _review_terms(self) -> Rule:
        if (self.effect == "review") != (self.review is not None):
            raise ValueError(
                f"rule {self.name!r}: a `review:` block goes with `effect: review`, and only there"
            )
        if self.match.volatile_functions and self.effect != "allow":
            raise ValueError(
                f"rule {self.name!r}: `volatile_functions` goes with `effect: allow` "
                "(to deny calls of a function, list it in `functions`)"
            )
        return self

    @property
    def statement_conditions(self) -> bool:
        m = self.match
        return bool(m.kinds or m.tables or m.functions or m.flags or m.volatile_functions)

    def explanation(self) -> str:
        if self.message:
            return f"{self.message} (rule {self.name!r})"
        return f"{self.effect} by rule {self.name!r}"


class PolicyConfig(BaseModel):
    """The `policy:` key of the gateway config."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    rules: list[Rule] = Field(default_factory=list)
    # On these connections (globs) what no rule allows is denied.
    guarded_connections: list[str] = Field(default_factory=list)
    masking: list[MaskingRuleConfig] = Field(default_factory=list)  # gateway/policy/masking.py

    # Exfiltration budgets: rows/bytes per user, connection and day (gateway/policy/budgets.py).
    budgets: list[Budget] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> PolicyConfig:
        names = [r.name for r in self.rules]
        if len(names) != len(set(names)):
            raise ValueError("policy rule names must be unique")
        budgets = [b.name for b in self.budgets]
        if len(budgets) != len(set(budgets)):
            raise ValueError("budget names must be unique")
        return self


def subject_for(
    access: AccessPolicy, user: str, groups: Iterable[str], *, machine: bool
) -> Subject:
    """The identity facts rules match on; roles are the Wardgate roles that apply."""
    groups = tuple(groups)
    roles = tuple(r.name for r in access.roles_of(user, groups))
    return Subject(user=user, groups=groups, roles=roles, machine=machine)


@dataclass(frozen=True, slots=True)
class StatementDecision:
    facts: Facts | None  # None: the text could not be parsed
    effect: Effect
    reason: str
    rules: tuple[str, ...] = ()
    review: ReviewTerms | None = None  # effect review: the terms of the first review rule


# A StatementDecision without its facts: (effect, reason, rules, review).
_Verdict = tuple[Effect, str, tuple[str, ...], "ReviewTerms | None"]


@dataclass(frozen=True, slots=True)
class Decision:
    effect: Effect
    reason: str
    rules: tuple[str, ...] = ()
    statements: tuple[StatementDecision, ...] = field(default=())
    review: ReviewTerms | None = None  # effect review: the terms the approvers must meet

    @property
    def allowed(self) -> bool:
        return self.effect == "allow"


def _table_matches(table: str, pattern: str) -> bool:
    table, pattern = table.lower(), pattern.lower()
    if "." not in pattern:
        return fnmatch.fnmatchcase(table.rsplit(".", 1)[-1], pattern)
    if "." not in table:  # unqualified: any schema on the search_path
        return fnmatch.fnmatchcase(table, pattern.rsplit(".", 1)[-1])
    # db.schema.table and schema.table compare on their last two parts.
    return fnmatch.fnmatchcase(".".join(table.split(".")[-2:]), pattern)


def _function_matches(qualified: str, pattern: str) -> bool:
    """`schema.name` against a glob; a pattern without a dot matches the name in any schema."""
    if "." not in pattern:
        return fnmatch.fnmatchcase(qualified.rsplit(".", 1)[-1].lower(), pattern)
    return fnmatch.fnmatchcase(qualified.lower(), pattern)


def _denies(rule: Rule, facts: Facts) -> bool:
    m = rule.match
    unseen = facts.opaque  # a deny rule assumes the worst of what it cannot read
    if m.kinds and not (unseen or any(k in m.kinds for k in facts.effective_kinds)):
        return False
    if m.tables and not (
        unseen or any(_table_matches(t, p) for t in facts.tables for p in m.tables)
    ):
        return False
    if m.functions and not any(_glob(f, m.functions) for f in facts.functions):
        return False
    return not (m.flags and not any(f in facts.flags for f in m.flags))


def _allows(rule: Rule, facts: Facts) -> bool:
    m = rule.match
    if facts.opaque:
        return False
    kinds = facts.kinds
    untrusted = [
        w for w in facts.writers if not any(_function_matches(w, p) for p in m.volatile_functions)
    ]
    if untrusted and "write" not in kinds:
        kinds = ("write", *kinds)  # a call of a VOLATILE user function this rule does not trust
    if m.kinds and not all(k in m.kinds for k in kinds):
        return False
    if m.tables and not all(any(_table_matches(t, p) for p in m.tables) for t in facts.tables):
        return False
    if m.functions and not all(_glob(f, m.functions) for f in facts.functions):
        return False
    allowed_flags = set(m.flags)
    if "outside_data" in allowed_flags:
        allowed_flags |= OUTSIDE_DATA_FLAGS
    return all(f in allowed_flags for f in facts.flags if f != "outside_data")


class Policy:
    """The guardrails of one gateway; `for_session` narrows them to one identity."""

    def __init__(self, config: PolicyConfig | None = None) -> None:
        self.config = config or PolicyConfig()

    @property
    def empty(self) -> bool:
        return not self.config.rules and not self.config.guarded_connections

    def applicable(self, subject: Subject, connection: str) -> tuple[Rule, ...]:
        return tuple(r for r in self.config.rules if r.match.applies(subject, connection))

    def guarded(self, connection: str) -> bool:
        return _glob(connection, self.config.guarded_connections)

    def for_session(self, subject: Subject, connection: str) -> SessionGuard | None:
        """The checker for one session, or None when nothing can ever be denied there."""
        rules = self.applicable(subject, connection)
        guarded = self.guarded(connection)
        if not guarded and not any(r.effect in ("deny", "review") for r in rules):
            return None  # only allow rules, or none: everything passes, parse nothing
        return SessionGuard(rules, guarded=guarded)

    def unenforceable(
        self, subject: Subject, connection: str
    ) -> tuple[str, tuple[str, ...]] | None:
        """(reason, rules) when a session whose statements cannot be read must be refused."""
        if self.guarded(connection):
            return (
                f"connection {connection!r} is guarded and its statements cannot be checked",
                (),
            )
        for rule in self.applicable(subject, connection):
            if rule.effect == "allow":
                continue
            if not rule.statement_conditions:
                return rule.explanation(), (rule.name,)
            if rule.match.connections:
                return (
                    f"rule {rule.name!r} applies to connection {connection!r}, "
                    "whose statements cannot be checked",
                    (rule.name,),
                )
        return None

    def evaluate(self, subject: Subject, connection: str, sql: str) -> Decision:
        """The decision on `sql` for `subject` on `connection` (what explain shows)."""
        guard = SessionGuard(self.applicable(subject, connection), guarded=self.guarded(connection))
        return guard.check(sql)


class SessionGuard:
    """The rules that apply to one identity on one connection, judging its statements."""

    def __init__(self, rules: Sequence[Rule], *, guarded: bool) -> None:
        self.rules = tuple(rules)
        self.guarded = guarded
        self._deny = tuple(r for r in self.rules if r.effect == "deny")
        self._review = tuple(r for r in self.rules if r.effect == "review")
        self._allow = tuple(r for r in self.rules if r.effect == "allow")
        self._verdicts: dict[tuple[object, ...], _Verdict] = {}

    def check(
        self, sql: str, writers: Callable[[Sequence[Facts]], Sequence[Facts]] | None = None
    ) -> Decision:
        """The decision on `sql`; `writers` adds to each statement's facts the volatile user
        functions it calls (`gateway.policy.functions`), when the catalog was asked."""
        try:
            facts = _statement_facts(sql)
            if writers is not None:
                facts = list(writers(facts))
        except UnparsableSQL as exc:
            if self.guarded or self._deny or self._review:
                reason = f"policy: {exc}"
                return Decision("deny", reason, (), (StatementDecision(None, "deny", reason),))
            reason = "no rule applies; the server will reject the text"
            return Decision("allow", reason, (), (StatementDecision(None, "allow", reason),))
        judged = tuple(self.judge(f) for f in facts)
        several = len(judged) > 1
        for d in judged:
            if d.effect == "deny" and d.facts is not None:
                where = f"statement {d.facts.index} of {len(judged)}: " if several else ""
                return Decision("deny", f"{where}{d.reason}", d.rules, judged)
        held = [d for d in judged if d.effect == "review" and d.facts is not None]
        if held:
            first = held[0]
            assert first.facts is not None
            where = f"statement {first.facts.index} of {len(judged)}: " if several else ""
            rules = tuple(dict.fromkeys(r for d in held for r in d.rules))
            return Decision("review", f"{where}{first.reason}", rules, judged, first.review)
        rules = tuple(dict.fromkeys(r for d in judged for r in d.rules))
        if not judged:
            return Decision("allow", "empty query", (), judged)
        reason = judged[0].reason if len(judged) == 1 else "every statement is allowed"
        return Decision("allow", reason, rules, judged)

    # Verdicts depend on what a statement is, never on its text: a session sends the same few
    # kinds of statement over and over, so each is judged against the rules once.
    MAX_VERDICTS = 1024

    def judge(self, facts: Facts) -> StatementDecision:
        key = (facts.kinds, facts.tables, facts.functions, facts.flags, facts.opaque, facts.writers)
        verdict = self._verdicts.get(key)
        if verdict is None:
            verdict = self._verdict(facts)
            if len(self._verdicts) < self.MAX_VERDICTS:
                self._verdicts[key] = verdict
        return StatementDecision(facts, *verdict)

    def _verdict(self, facts: Facts) -> _Verdict:
        denied = [r for r in self._deny if _denies(r, facts)]
        if denied:
            return "deny", denied[0].explanation(), tuple(r.name for r in denied), None
        held = [r for r in self._review if _denies(r, facts)]
        if held:
            reason = held[0].message or f"needs approval by rule {held[0].name!r}"
            if held[0].message:
                reason = f"{reason} (rule {held[0].name!r})"
            return "review", reason, tuple(r.name for r in held), held[0].review
        allowed = [r for r in self._allow if _allows(r, facts)]
        if allowed:
            names = tuple(r.name for r in allowed)
            return "allow", f"allowed by rule {names[0]!r}", names, None
        if self.guarded:
            reason = f"no rule allows this statement ({facts.describe()}) on a guarded connection"
            return "deny", reason, (), None
        return "allow", "no rule denies this statement", (), None
