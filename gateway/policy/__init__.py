"""Policy: what an identity may do once it is known.

* ``grants``: roles (from IdP groups, user names) grant connections at an access level
  (read-only, read-write, admin); the session broker asks it at every session open.
* ``readonly``: the PostgreSQL read-only classifier (pglast), pure and sans-I/O; the
  PostgreSQL front door runs it on every statement of a read-only session.

Both are pure functions of their inputs: no I/O, no asyncio, no authlib (an import-linter
contract keeps it so), so they are tested with tables of cases.
"""
