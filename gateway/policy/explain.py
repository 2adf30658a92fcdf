"""Why would this statement be allowed or denied? The whole decision, for people.

Pure and sans-I/O. It runs the checks in the order the PostgreSQL front door does: the
access the roles grant (none refuses the session), read-only enforcement when that access is
read-only, then the guardrails. The answer is plain data (what `POST /v1/policy/explain`
returns and `wardgate policy explain` prints).
"""

from __future__ import annotations

from typing import Any

from gateway.policy.grants import AccessPolicy
from gateway.policy.readonly import check_read_only
from gateway.policy.rules import Policy, subject_for


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
) -> dict[str, Any]:
    """`statements_checked`: False for connections whose statements cannot be read (tcp)."""
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
    }
    # The earlier checks win, as at the front door.
    if granted.access is None:
        out.update(decision="deny", reason=f"no access: {granted.reason}", rules=[])
    elif not statements_checked:
        blocked = guardrails.unenforceable(subject, connection)
        if blocked is not None:
            out.update(decision="deny", reason=f"policy: {blocked[0]}", rules=list(blocked[1]))
    elif granted.access == "read-only":
        verdict = check_read_only(sql)
        if not verdict.allowed:
            out.update(decision="deny", reason=verdict.reason, rules=[])
    return out
