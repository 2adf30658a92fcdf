"""Finding sessions and reading one back, for `GET /v1/sessions[/{id}]` and the console's
Auditor pages: the same filters, the same rule on who sees what (an administrator every
session, anyone else their own), the same keyset paging (api/paging.py).

Every filter is a condition in the one SQL query that reads the page, so a page holds
`limit` matching sessions whatever the filters, and the next page starts after the last of
them: statement text and outcomes are subqueries on the audit events, not a filter applied
to rows already read.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from fastapi import HTTPException

from gateway.api.activity import k8s_activity, pg_activity, ssh_activity
from gateway.auth import Identity
from gateway.store import EventMatch, SessionRecord, Store

# What "text" searches: statements (run or refused), SSH commands, Kubernetes requests.
TEXT_KINDS = ("pg.statement", "pg.refused", "ssh.exec", "k8s.request")

# An outcome is found in a session's audit events (canonical JSON: sorted keys, no spaces).
OUTCOMES: dict[str, tuple[EventMatch, ...]] = {
    "refused": (
        EventMatch(("pg.refused", "ssh.refused")),
        EventMatch(("k8s.request",), fragment='"decision":"deny"'),
    ),
    "masked": (
        EventMatch(("pg.masked",)),
        EventMatch(("pg.result",), fragment='"masked":['),
        EventMatch(("k8s.response",), lacks=('"masked":0,', '"masked":0}')),
    ),
    "held": (
        EventMatch(("review.created",)),
        # A Kubernetes request names the review that held it (or the approval it reused).
        EventMatch(("k8s.request",), fragment='"review":"'),
    ),
    "failed": (
        EventMatch(("pg.result", "k8s.response"), lacks=('"error":null',), or_status="failed"),
        EventMatch(("ssh.exit",), lacks=('"status":0,', '"status":0}', '"status":null')),
    ),
}


@dataclass(frozen=True, slots=True)
class SessionQuery:
    user: str | None = None
    connection: str | None = None
    protocol: str | None = None
    since: dt.datetime | None = None  # started at or after
    until: dt.datetime | None = None  # started before
    text: str | None = None
    outcome: str | None = None  # one of OUTCOMES


async def find_sessions(
    store: Store,
    who: Identity,
    query: SessionQuery,
    *,
    limit: int,
    before: tuple[dt.datetime, str] | None = None,
) -> tuple[list[SessionRecord], tuple[dt.datetime, str] | None]:
    """A page of the sessions `who` may see that match `query`, newest first, and the key
    the next page starts after (None on the last page)."""
    having: list[tuple[EventMatch, ...]] = []
    if query.text:
        having.append((EventMatch(TEXT_KINDS, text=query.text),))
    if query.outcome:
        if query.outcome not in OUTCOMES:
            raise HTTPException(
                422, f"outcome: one of {', '.join(OUTCOMES)}, not {query.outcome!r}"
            )
        having.append(OUTCOMES[query.outcome])
    rows = await store.io.scan(
        store.sessions.list_all,
        user=query.user if who.is_admin else who.user,  # people see their own sessions
        connection=query.connection,
        protocol=query.protocol,
        since=query.since,
        until=query.until,
        before=before,
        having=having,
        limit=limit + 1,
    )
    if len(rows) <= limit:
        return rows, None
    rows = rows[:limit]
    return rows, (rows[-1].started_at, rows[-1].id)


async def visible_session(store: Store, who: Identity, session_id: str) -> SessionRecord:
    """The session, if `who` may see it; 404 otherwise (whether it exists is not told)."""
    record = await store.io.read(store.sessions.get, session_id)
    if record is None or (not who.is_admin and record.user != who.user):
        raise HTTPException(404, f"session {session_id!r} does not exist")
    return record


async def session_activity(store: Store, session_id: str) -> dict[str, Any]:
    """What the session did, per protocol, read back from its audit events; empty lists for
    the other protocols."""
    events = await store.io.scan(store.audit.list_all, session_id=session_id, limit=100_000)
    recordings = [
        {
            "channel": e.data.get("channel"),
            "seq": e.seq,
            "ts": e.ts.isoformat(),
            "command": e.data.get("command"),
            "bytes": e.data.get("bytes"),
            "incomplete": bool(e.data.get("incomplete")),
        }
        for e in events
        if e.kind == "ssh.recording"
    ]
    held = [
        {"seq": e.seq, "ts": e.ts.isoformat(), "review": e.data.get("review"), "kind": e.kind}
        for e in events
        if e.kind.startswith("review.")
    ]
    return {
        **pg_activity(events),
        **ssh_activity(events),
        **k8s_activity(events),
        "recordings": recordings,
        "reviews": held,
    }
