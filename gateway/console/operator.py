"""The Operator pages (administrators only) and a session's export.

GET  /console/operator                          live sessions with Terminate, gateway members
                                                (live or gone, version, heartbeat), agents by
                                                pool (connected, last heard of, version),
                                                connections, users and service accounts,
                                                exfiltration budgets' usage today
POST /console/operator/sessions/{id}/terminate  (CSRF) `reason`: the API's Terminator
POST /console/operator/keys/{id}/revoke         (CSRF) a service account's API key revoked:
                                                IdentityService.revoke, as the API's
GET  /console/policy[?a=N&b=M]                  policy versions; with a and b, their diff
POST /console/policy/versions/{n}/rollback      (CSRF) PolicySource.rollback, as the API's
GET  /console/sessions/{id}/export              the session's events and recordings as one
                                                JSON file that verifies offline
                                                (gateway/store/export.py)

Every action is the API's own call with the signed-in person's name: ending a session is
`Terminator.terminate` (audited `session.terminated` with `by`), a rollback is
`PolicySource.rollback` (audited `policy.applied`). The administrator rule is `require_admin`,
word for word.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import difflib
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

from fastapi import APIRouter, HTTPException, Request, Response

from gateway.api import search
from gateway.api.deps import ApiDeps, require_admin
from gateway.api.ssh import read_recording
from gateway.api.terminate import STATUS
from gateway.console.auth import Signed
from gateway.console.render import HEADERS, page
from gateway.fleet.terminate import MAX_REASON, TerminateRefused, Terminator
from gateway.identity.credentials import IdentityError
from gateway.policystore import PolicyDocumentError
from gateway.store import chain, export
from gateway.store.models import AuditEvent

Handler = Callable[[Request, Signed], Awaitable[Response]]
SignedIn = Callable[[Handler], Callable[[Request], Awaitable[Response]]]
LIVE_SCAN = 500  # newest sessions looked at for the live list (keeps the page bounded)
EXPORT_EVENTS = 20_000  # a session's events in one export (and one chain check)


class Form(Protocol):
    def get(self, name: str) -> str: ...


Posted = Callable[[Request], Awaitable[tuple[Signed | Response, Form]]]


def _pretty(document: str) -> list[str]:
    """A stored (canonical, one-line) policy document as lines a diff can show."""
    return json.dumps(json.loads(document), indent=2, sort_keys=True).splitlines()


async def session_events(deps: ApiDeps, session_id: str) -> list[AuditEvent]:
    return await deps.store.io.read(
        deps.store.audit.list_all, session_id=session_id, limit=EXPORT_EVENTS
    )


def chain_state(events: list[AuditEvent]) -> dict[str, Any]:
    """Whether each of a session's events still matches its chain hash (bounded by the
    session's events; `wardgate audit verify` checks the whole chain)."""
    bad = [e.seq for e in events if chain.hash_of(e, e.prev_hash) != e.hash]
    return {"checked": len(events), "bad": bad, "intact": not bad}


def add_routes(
    api: APIRouter,
    deps: ApiDeps,
    signed_in: SignedIn,
    posted: Posted,
    terminator: Terminator | None,
    recordings: Path | None,
) -> None:
    def not_admin(signed: Signed) -> Response | None:
        try:
            require_admin(signed.identity)
        except HTTPException as exc:
            return page("error.html", 403, title="Not for you", message=exc.detail, signed=signed)
        return None

    async def budget_usage() -> list[dict[str, Any]]:
        """Today's usage of each budget in force, per (user, connection), against its limits
        (the store's totals, as `GET /v1/budgets/usage` reads them)."""
        source = deps.policy_source
        budgets = {b.name: b for b in source.policy.config.budgets} if source else {}
        today = dt.datetime.now(dt.UTC).date()
        rows = await deps.store.io.read(deps.store.policy.budget_usage, today)
        out = []
        for user, connection, name, used_rows, used_bytes in sorted(rows):
            budget = budgets.get(name)
            if budget is None:  # a budget no longer in the policy
                continue
            out.append(
                {
                    "budget": name,
                    "user": user,
                    "connection": connection,
                    "rows": used_rows,
                    "rows_limit": budget.rows_per_day,
                    "bytes": used_bytes,
                    "bytes_limit": budget.bytes_per_day,
                }
            )
        return out

    async def api_keys(users: list[Any]) -> list[dict[str, Any]]:
        """Service accounts' API keys: id, label, scopes, dates and state; never the key (the
        store holds only its hash anyway)."""
        now = dt.datetime.now(dt.UTC)
        out = []
        for u in users:
            if u.kind != "service":
                continue
            tokens = await deps.store.io.scan(deps.store.identity.list_tokens, u.name)
            for tk in tokens:
                if tk.kind != "api_key":
                    continue
                state = "revoked" if tk.revoked_at else "active" if tk.valid_at(now) else "expired"
                out.append({"token": tk, "state": state})
        return out

    async def operator_context(signed: Signed, ended: str | None = None) -> dict[str, Any]:
        agents = await deps.store.io.scan(deps.store.agents.list_all)
        now = time.monotonic()
        rows = []
        for a in agents:
            live = deps.registry.get(a.name)
            rows.append(
                {
                    "name": a.name,
                    "pool": a.pool,
                    "state": "revoked" if a.revoked else "connected" if live else "disconnected",
                    "version": live.version if live else "",
                    "heard": f"{now - live.last_seen:.0f} s ago" if live else "",
                    "sessions": live.active_sessions if live else 0,
                }
            )
        pools: dict[str, list[int]] = {}
        for r in rows:
            counts = pools.setdefault(str(r["pool"]), [0, 0])
            counts[0] += r["state"] == "connected"
            counts[1] += 1
        recent = await deps.store.io.read(deps.store.sessions.list_all, limit=LIVE_SCAN)
        users = await deps.store.io.scan(deps.store.identity.list_users)
        return {
            "signed": signed,
            "agents": rows,
            "pools": sorted(pools.items()),
            "members": await deps.store.io.scan(deps.store.members.list_all),
            "users": users,
            "api_keys": await api_keys(users),
            "connections": await deps.store.io.scan(deps.store.connections.list_all),
            # One just ended (its end is written to the store a moment later) is shown no more.
            "live": [
                s
                for s in recent
                if s.ended_at is None and s.id != ended and not deps.broker.is_ending(s.id)
            ],
            "can_terminate": terminator is not None,
            "budgets": await budget_usage(),
            "budget_names": [b.name for b in deps.policy_source.policy.config.budgets]
            if deps.policy_source
            else [],
            "max_reason": MAX_REASON,
        }

    async def operator_page(request: Request, signed: Signed) -> Response:
        if (refused := not_admin(signed)) is not None:
            return refused
        return page("operator.html", **await operator_context(signed), notice=None, error=None)

    async def terminate(request: Request) -> Response:
        checked, form = await posted(request)
        if isinstance(checked, Response):
            return checked
        if (refused := not_admin(checked)) is not None:
            return refused
        session_id = request.path_params["session_id"]
        notice = error = None
        status = 200
        reason = form.get("reason").strip()[:MAX_REASON] or None
        ended = None
        if terminator is None:
            error, status = "this gateway cannot end sessions", 404
        else:
            try:  # the API's call: the client is told, `session.terminated` records `by`
                done = await terminator.terminate(
                    session_id, reason=reason, by=checked.identity.user
                )
                notice = f"Session {done.session_id} ended: {done.reason}"
                ended = done.session_id
            except TerminateRefused as exc:
                error, status = exc.message, STATUS[exc.kind]
        context = await operator_context(checked, ended)
        return page("operator.html", status, **context, notice=notice, error=error)

    async def revoke_key(request: Request) -> Response:
        checked, _ = await posted(request)
        if isinstance(checked, Response):
            return checked
        if (refused := not_admin(checked)) is not None:
            return refused
        key_id = request.path_params["key_id"]
        notice = error = None
        status = 200
        if deps.identity is None:
            error, status = "identity services are not configured", 404
        else:
            try:  # the API's call (`wardgate credentials revoke`): audited, sessions ended
                done = await deps.identity.revoke(checked.identity, key_id)
                notice = f"API key {key_id} revoked ({done['sessions_ended']} sessions ended)."
            except IdentityError as exc:
                error, status = exc.message, exc.status
        context = await operator_context(checked)
        return page("operator.html", status, **context, notice=notice, error=error)

    async def policy_context(signed: Signed, a: str, b: str) -> tuple[int, dict[str, Any]]:
        versions = await deps.store.io.scan(deps.store.policy.list_versions)
        diff: list[str] | None = None
        error = None
        status = 200
        if a and b:
            by_number = {str(v.version): v for v in versions}
            old, new = by_number.get(a), by_number.get(b)
            if old is None or new is None:
                error, status = f"no policy version {a if old is None else b}", 404
            else:
                diff = list(
                    difflib.unified_diff(
                        _pretty(old.document),
                        _pretty(new.document),
                        f"version {a}",
                        f"version {b}",
                        lineterm="",
                    )
                )
        return status, {
            "signed": signed,
            "versions": list(reversed(versions)),
            "current": versions[-1].version if versions else None,
            "a": a,
            "b": b,
            "diff": diff,
            "error": error,
            "notice": None,
            "enabled": deps.policy_source is not None,
        }

    async def policy_page(request: Request, signed: Signed) -> Response:
        if (refused := not_admin(signed)) is not None:
            return refused
        a = request.query_params.get("a", "").strip()
        b = request.query_params.get("b", "").strip()
        status, context = await policy_context(signed, a, b)
        return page("policy.html", status, **context)

    async def rollback(request: Request) -> Response:
        checked, _ = await posted(request)
        if isinstance(checked, Response):
            return checked
        if (refused := not_admin(checked)) is not None:
            return refused
        raw = request.path_params["version"]
        notice = error = None
        status = 200
        source = deps.policy_source
        if source is None:
            error, status = "this gateway keeps no policy versions", 404
        elif not raw.isdigit():
            error, status = f"no policy version {raw}", 404
        else:
            try:  # the API's call: audited `policy.applied`, a new version
                applied = await source.rollback(int(raw), applied_by=checked.identity.user)
            except PolicyDocumentError as exc:
                applied, error, status = None, str(exc), 422
            if applied is not None:
                notice = f"Rolled back to version {raw}: now version {applied.record.version}."
            elif error is None:
                error, status = f"no policy version {raw}", 404
        _, context = await policy_context(checked, "", "")
        return page("policy.html", status, **{**context, "notice": notice, "error": error})

    async def export_session(request: Request, signed: Signed) -> Response:
        session_id = request.path_params["session_id"]
        try:  # who may see the session may export it (the API's rule)
            record = await search.visible_session(deps.store, signed.identity, session_id)
            events = await session_events(deps, record.id)
            files = []
            for e in events:
                if e.kind == "ssh.recording" and recordings is not None:
                    channel = int(e.data.get("channel", 0))
                    data = await read_recording(
                        deps.store, recordings, signed.identity, record.id, channel
                    )
                    files.append(export.Recording(channel, e.seq, data))
        except HTTPException as exc:
            response = Response(f"{exc.detail}\n", exc.status_code, media_type="text/plain")
            response.headers.update(HEADERS)
            return response
        session = {
            "id": record.id,
            "user": record.user,
            "connection": record.connection,
            "protocol": record.protocol,
            "started_at": record.started_at.isoformat(),
            "ended_at": record.ended_at.isoformat() if record.ended_at else None,
            "status": record.status,
        }
        body = await asyncio.to_thread(export.build, session, events, files)
        await deps.auditor.record(
            "console.export", actor=signed.identity.user, session=record.id, events=len(events)
        )
        response = Response(body, media_type="application/json")
        response.headers.update(HEADERS)
        response.headers["Cache-Control"] = "no-store"
        response.headers["Content-Disposition"] = (
            f'attachment; filename="wardgate-session-{record.id}.json"'
        )
        return response

    api.add_api_route("/console/operator", signed_in(operator_page), methods=["GET"])
    api.add_api_route(
        "/console/operator/sessions/{session_id}/terminate", terminate, methods=["POST"]
    )
    api.add_api_route("/console/operator/keys/{key_id}/revoke", revoke_key, methods=["POST"])
    api.add_api_route("/console/policy", signed_in(policy_page), methods=["GET"])
    api.add_api_route("/console/policy/versions/{version}/rollback", rollback, methods=["POST"])
    api.add_api_route(
        "/console/sessions/{session_id}/export", signed_in(export_session), methods=["GET"]
    )
