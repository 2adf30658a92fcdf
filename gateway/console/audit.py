"""The Auditor pages: find sessions, read one's timeline, replay its terminal recordings.

GET /console/sessions                       search (user, connection, protocol, time range,
                                            text, outcome), newest first, keyset pages
GET /console/sessions/{id}                  the session's timeline
GET /console/sessions/{id}/recordings/{ch}  a channel's asciicast, for the player

Who sees what is the API's rule, through the API's own functions (gateway/api/search.py,
gateway/api/ssh.py): an administrator every session, anyone else their own. Reading changes
nothing, so these are GETs without CSRF tokens; the filter form is a GET form too, so a
search is a link that can be kept and shared.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, HTTPException, Request, Response

from gateway.api import paging, search
from gateway.api.deps import ApiDeps
from gateway.api.ssh import CAST_MEDIA_TYPE, read_recording
from gateway.console import operator
from gateway.console.auth import Signed
from gateway.console.render import HEADERS, PLAYER_CSP, page
from gateway.store import SessionRecord

Handler = Callable[[Request, Signed], Awaitable[Response]]
SignedIn = Callable[[Handler], Callable[[Request], Awaitable[Response]]]

PAGE_SIZE = 50
FILTERS = ("user", "connection", "protocol", "since", "until", "text", "outcome")
PROTOCOLS = ("postgres", "ssh", "kubernetes", "tcp")


class _BadFilter(ValueError):
    pass


def _when(value: str, name: str) -> dt.datetime | None:
    """A time from the form (`datetime-local`, read as UTC) or a full ISO 8601 one."""
    if not value:
        return None
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        raise _BadFilter(f"{name}: not a date and time ({value!r}); use 2026-12-08T09:30") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)


def _query(filters: dict[str, str]) -> search.SessionQuery:
    return search.SessionQuery(
        user=filters["user"] or None,
        connection=filters["connection"] or None,
        protocol=filters["protocol"] or None,
        since=_when(filters["since"], "from"),
        until=_when(filters["until"], "until"),
        text=filters["text"] or None,
        outcome=filters["outcome"] or None,
    )


def _time(value: str | dt.datetime | None) -> str:
    if value is None:
        return ""
    when = dt.datetime.fromisoformat(value) if isinstance(value, str) else value
    return when.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _statement_rows(activity: dict[str, Any]) -> list[dict[str, Any]]:
    """The statements that ran and those policy refused, in order, each with its outcome."""
    rows = []
    for st in activity["statements"]:
        masked = sum(int(m.get("count", 0)) for m in st["masked"])
        outcome = "failed" if st["error"] else "masked" if masked else "ok"
        rows.append({**st, "outcome": outcome, "masked_count": masked, "when": _time(st["ts"])})
    for r in activity["refused"]:
        rows.append(
            {
                **r,
                "outcome": "refused",
                "rows": None,
                "masked_count": 0,
                "duration_ms": None,
                "error": r["reason"],
                "when": _time(r["ts"]),
            }
        )
    return sorted(rows, key=lambda r: int(r["seq"]))


def add_routes(api: APIRouter, deps: ApiDeps, signed_in: SignedIn, recordings: Path | None) -> None:
    async def sessions_page(request: Request, signed: Signed) -> Response:
        filters = {name: request.query_params.get(name, "").strip() for name in FILTERS}
        cursor = request.query_params.get("cursor", "")
        rows: list[SessionRecord] = []
        kept = {k: v for k, v in filters.items() if v}
        following = None
        error = None
        status = 200
        try:
            rows, last = await search.find_sessions(
                deps.store,
                signed.identity,
                _query(filters),
                limit=PAGE_SIZE,
                before=paging.decode_cursor(cursor) if cursor else None,
            )
            if last is not None:
                following = "?" + urlencode({**kept, "cursor": paging.encode_cursor(*last)})
        except _BadFilter as exc:
            error, status = str(exc), 422
        except HTTPException as exc:  # a cursor or outcome the API would refuse too
            error, status = str(exc.detail), exc.status_code
        return page(
            "sessions.html",
            status,
            signed=signed,
            filters=filters,
            outcomes=list(search.OUTCOMES),
            protocols=PROTOCOLS,
            rows=[(s, _time(s.started_at), _time(s.ended_at)) for s in rows],
            following=following,
            paged=bool(cursor),
            first="?" + urlencode(kept),
            error=error,
        )

    async def session_page(request: Request, signed: Signed) -> Response:
        session_id = request.path_params["session_id"]
        try:
            record = await search.visible_session(deps.store, signed.identity, session_id)
        except HTTPException as exc:
            return page(
                "error.html", 404, title="No such session", message=exc.detail, signed=signed
            )
        activity = await search.session_activity(deps.store, record.id)
        chain = operator.chain_state(await operator.session_events(deps, record.id))
        for group in ("commands", "transfers", "forwards", "kubernetes", "reviews", "recordings"):
            for item in activity[group]:
                item["when"] = _time(item["ts"])
        response = page(
            "session.html",
            signed=signed,
            s=record,
            started=_time(record.started_at),
            ended=_time(record.ended_at),
            statements=_statement_rows(activity),
            masked=activity["masked"],
            activity=activity,
            replay=recordings is not None,
            chain=chain,
        )
        if activity["recordings"] and recordings is not None:
            # The player's terminal is WebAssembly: this page alone may compile it.
            response.headers["Content-Security-Policy"] = PLAYER_CSP
        return response

    async def recording(request: Request, signed: Signed) -> Response:
        session_id = request.path_params["session_id"]
        try:
            channel = int(request.path_params["channel"])
            if recordings is None:
                raise HTTPException(404, "this gateway keeps no recordings")
            data = await read_recording(
                deps.store, recordings, signed.identity, session_id, channel
            )
        except ValueError:
            data, status, kind = b"channel: a number\n", 404, "text/plain"
        except HTTPException as exc:
            data, status, kind = f"{exc.detail}\n".encode(), exc.status_code, "text/plain"
        else:
            status, kind = 200, CAST_MEDIA_TYPE
        response = Response(data, status_code=status, media_type=kind)
        response.headers.update(HEADERS)
        response.headers["Cache-Control"] = "no-store"
        return response

    api.add_api_route("/console/sessions", signed_in(sessions_page), methods=["GET"])
    api.add_api_route("/console/sessions/{session_id}", signed_in(session_page), methods=["GET"])
    api.add_api_route(
        "/console/sessions/{session_id}/recordings/{channel}",
        signed_in(recording),
        methods=["GET"],
    )
