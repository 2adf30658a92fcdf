"""Why would this statement be allowed or denied? The whole decision, for people.

Pure and sans-I/O. It runs the checks in the order the PostgreSQL front door does: the
access the roles grant (none refuses the session), read-only enforcement when that access is
read-only, then the guardrails. The answer is plain data (what `POST /v1/policy/explain`
returns and `wardgate policy explain` prints). Beside the decision it lists what else the
policy does to the user's session on that connection: the masking rules the agent would
apply to its results, and the exfiltration budgets that count it (with today's usage when
the caller read it from the store). With column masking rules, the statement's lineage
(`lineage_report`): result columns derived from masked columns, with their paths, and the
clause uses the inference check refuses (`gateway.policy.lineage`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from gateway.policy.budgets import Usage, applicable
from gateway.policy.grants import AccessPolicy
from gateway.policy.lineage import ColumnRules
from gateway.policy.readonly import check_read_only
from gateway.policy.rules import Policy, Subject, subject_for
from shared.lineage import Lineage


def masking_rules(policy: Policy, subject: Subject, connection: str) -> list[dict[str, Any]]:
    """The masking rules that apply to `subject` on `connection`, as the agent gets them."""
    return [
        {
            "name": r.name,
            "columns": list(r.columns),
            "detectors": list(r.detectors),
            "regex": list(r.regex),
            "strategy": r.strategy,
        }
        for r in policy.config.masking
        if r.match.applies(subject, connection)
    ]


def lineage_report(
    rules: ColumnRules, lineages: Sequence[Lineage], refusal: str | None
) -> dict[str, Any]:
    """What lineage says about a statement under the session's column rules: the result
    columns that derive from a masked column (with one path each), the clause uses the
    inference check refuses, the writes that copy masked data, what it could not follow."""
    columns: list[dict[str, Any]] = []
    writes: list[dict[str, Any]] = []
    unresolved: list[str] = []
    for index, lineage in enumerate(lineages, 1):
        for position, column in enumerate(lineage.columns, 1):
            for source in sorted(column.sources):
                rule = rules.rule_for(source)
                if rule is None:
                    continue
                columns.append(
                    {
                        "statement": index,
                        "position": position,
                        "name": column.name,
                        "source": source.qualified,
                        "rule": rule.name,
                        "derived": not column.direct(source),
                        "path": column.path(source),
                    }
                )
        for write in lineage.writes:
            masked = sorted({str(s) for c in write.columns for s in c.sources if rules.rule_for(s)})
            if masked:
                writes.append({"statement": index, "target": write.target, "sources": masked})
        unresolved += lineage.unresolved
    return {
        "columns": columns,
        "refusals": [
            {
                "clause": r.use.clause,
                "source": r.use.source.qualified,
                "rule": r.rule,
                "reason": r.reason,
            }
            for r in rules.refusals(lineages)
        ],
        "writes": writes,
        "unresolved": list(dict.fromkeys(unresolved)),
        "refusal": refusal,
    }


def budgets(
    policy: Policy, subject: Subject, connection: str, usage: Mapping[str, Usage] | None
) -> list[dict[str, Any]]:
    """The budgets that count `subject` on `connection`, with today's usage if known."""
    out = []
    for b in applicable(policy.config.budgets, subject, connection):
        used = usage.get(b.name, Usage()) if usage is not None else None
        out.append(
            {
                "name": b.name,
                "rows_per_day": b.rows_per_day,
                "bytes_per_day": b.bytes_per_day,
                "on_exceed": b.on_exceed,
                "review": b.review.model_dump(mode="json") if b.review else None,
                "used": None if used is None else {"rows": used.rows, "bytes": used.bytes},
                "exhausted": None if used is None else b.over(used.rows, used.bytes) is not None,
            }
        )
    return out


def explain(
    guardrails: Policy,
    access: AccessPolicy,
    *,
    user: str,
    groups: tuple[str, ...],
    connection: str,
    sql: str,
    is_admin: bool = False,
    machine: bool = False,
    statements_checked: bool = True,
    usage: Mapping[str, Usage] | None = None,
    lineage: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """`statements_checked`: False for connections whose statements cannot be read (tcp).
    `usage`: today's usage of this user on this connection per budget, if read.
    `lineage`: the `lineage_report` of the statement, when column masking rules apply."""
    subject = subject_for(access, user, groups, machine=machine)
    roles = subject.roles
    granted = access.decide(user=user, groups=groups, is_admin=is_admin, connection=connection)
    applicable = guardrails.applicable(subject, connection)
    decision = guardrails.evaluate(subject, connection, sql)
    out: dict[str, Any] = {
        "user": user,
        "groups": list(groups),
        "roles": list(roles),
        "connection": connection,
        "access": granted.access,
        "access_reason": granted.reason,
        "guarded": guardrails.guarded(connection),
        "applicable_rules": [r.name for r in applicable],
        "decision": decision.effect,
        "reason": decision.reason,
        "rules": list(decision.rules),
        # effect review: who must approve, how many, how long it waits
        "review": decision.review.model_dump(mode="json") if decision.review else None,
        "statements": [
            {
                "index": s.facts.index if s.facts else None,
                "effect": s.effect,
                "reason": s.reason,
                "rules": list(s.rules),
                "facts": s.facts.describe() if s.facts else "unparsable",
                "text": s.facts.text if s.facts else sql,
            }
            for s in decision.statements
        ],
        "masking": masking_rules(guardrails, subject, connection),
        "budgets": budgets(guardrails, subject, connection, usage),
        "lineage": dict(lineage) if lineage is not None else None,
    }
    # The earlier checks win, as at the front door.
    if granted.access is None:
        out.update(decision="deny", reason=f"no access: {granted.reason}", rules=[])
    elif not statements_checked:
        blocked = guardrails.unenforceable(subject, connection)
        if blocked is not None:
            out.update(decision="deny", reason=f"policy: {blocked[0]}", rules=list(blocked[1]))
    elif granted.access == "read-only" and not check_read_only(sql).allowed:
        out.update(decision="deny", reason=check_read_only(sql).reason, rules=[])
    elif out["decision"] != "deny" and lineage is not None and lineage.get("refusal"):
        # After the guardrails, as at the front door (gateway.protocols.pgrelay.judge).
        rules = sorted({r["rule"] for r in lineage["refusals"]})
        out.update(decision="deny", reason=lineage["refusal"], rules=rules, review=None)
    return out
