"""Policy: what an identity may do once it is known.

* ``who``: the identity and connection conditions (`WhoMatch`) every kind of rule below
  starts with, and the `Subject` they are matched against.
* ``grants``: roles (from IdP groups, user names) grant connections at an access level
  (read-only, read-write, admin); the session broker asks it at every session open.
* ``readonly``: the PostgreSQL read-only classifier (pglast), pure and sans-I/O; the
  PostgreSQL front door runs it on every statement of a read-only session.
* ``facts``: what each statement is (kinds, tables, functions, flags such as
  outside-data access), read off the same pglast tree with the same walker as ``readonly``.
* ``rules``: guardrails, allow/deny rules from the config's ``policy:`` key matched on the
  identity, the connection and the facts; deny wins; the front door runs them after the
  read-only check, on every Query and Parse of sessions where a rule can deny.
* ``writes``: the one table of built-in functions that write, read by ``readonly`` and
  ``facts`` alike.
* ``functions``: what user-defined functions do, from the server's catalog (asked by
  ``gateway.protocols.pgfunctions``): a call of a VOLATILE one is a write for ``rules``.
* ``explain``: the whole decision (access, read-only, guardrails) for ``policy explain``.
* ``budgets``: exfiltration budgets (rows/bytes per user, connection and UTC day), the
  per-session meter and the sans-I/O cutter that stops a result keeping the wire valid.
* ``masking``: which masking rules apply to a session, resolved into the spec the agent runs.
* ``approval``: review terms and the segregation-of-duties rules for votes.
* ``ssh``, ``kube``: per-connection SSH channel/exec rules and Kubernetes request rules.
* ``errors``: how an invalid policy document is reported, field by field.

All are pure functions of their inputs: no I/O, no asyncio, no authlib (an import-linter
contract keeps it so), so they are tested with tables of cases.
"""
