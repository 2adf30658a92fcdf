"""The User page: the connections the signed-in person may reach, each with the commands
that reach it; a per-connection credential minted on request; access requests (JIT) for the
connections they may only request; and their own reviews, followed live.

GET  /console/connections                    the page
GET  /console/connections/mine[?seen=]       "My requests" (htmx polls it; 204 while unchanged)
POST /console/connections/{name}/credential  (CSRF) mint a credential: IdentityService
                                             .connection_credential, as POST
                                             /v1/credentials/connection and `wardgate creds`
POST /console/connections/{name}/request     (CSRF) `reason`, `minutes`: ReviewService
                                             .request_access, as POST /v1/requests and MCP's
                                             `request_access`

A connection is listed when the session broker would open a session on it for this person
now (`SessionBroker.access`, what `GET /v1/connections/{name}/access` answers and
`wardgate tcp` asks before it listens), or could after an approved request (`on_request`);
nothing is opened or recorded. The commands are the CLI's (shared/connect.py), for the host
and port the browser reached the gateway on: the console is served on the public port, which
every protocol shares. psql verifies the gateway's certificate against the CA file the page
offers (`GET /v1/ca.pem`, what clients of this gateway trust), saved as CA_FILE.

A minted credential is in that one response only (no-store, never logged): the page shows it
once, and a reload shows it no more. The service audits it (`credential.issued`) as for the
API.
"""

from __future__ import annotations

import hashlib
from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Request, Response

from gateway.api.deps import ApiDeps
from gateway.console.audit import SignedIn
from gateway.console.auth import Signed, request_host
from gateway.console.operator import Posted
from gateway.console.render import HEADERS, page
from gateway.identity.credentials import IdentityError
from gateway.reviews import ReviewError
from gateway.store import ReviewRecord
from shared.connect import commands, conninfo, libpq_params

CA_FILE = "wardgate-ca.pem"
POLL_SECONDS = 2  # how often "My requests" asks for news
MY_REQUESTS = 50  # the newest of the person's own reviews shown
MAX_MINUTES = 7 * 24 * 60  # the form's bound; the grant's own max_duration decides


def _public(request: Request) -> tuple[str, int]:
    url = urlsplit(f"https://{request_host(request) or 'GATEWAY'}")
    return url.hostname or "GATEWAY", url.port or 443


def _digest(records: list[ReviewRecord]) -> str:
    text = "|".join(f"{r.id}:{r.status}:{len(r.votes)}" for r in records)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _minutes(value: str) -> int | None:
    try:
        minutes = int(value.strip())
    except ValueError:
        return None
    return minutes if 0 < minutes <= MAX_MINUTES else None


def add_routes(api: APIRouter, deps: ApiDeps, signed_in: SignedIn, posted: Posted) -> None:
    async def listed(request: Request, who: Signed) -> dict[str, Any]:
        host, port = _public(request)
        reachable, requestable = [], []
        postgres = False
        for record in await deps.store.io.scan(deps.store.connections.list_all):
            decision = await deps.broker.access(who.identity, record)
            if decision.access is None:
                if decision.on_request is not None and deps.reviews is not None:
                    requestable.append({"c": record})
                continue
            lines = commands(
                record.type,
                host=host,
                port=port,
                connection=record.name,
                user=who.identity.user,
                sslrootcert=CA_FILE,
            )
            reachable.append({"c": record, "access": decision.access, "commands": lines})
            postgres = postgres or record.type == "postgres"
        return {
            "reachable": reachable,
            "requestable": requestable,
            "ca_file": CA_FILE if postgres else None,
            "mint": deps.identity is not None,
        }

    async def mine(signed: Signed) -> dict[str, Any]:
        found = []
        if deps.reviews is not None:
            found = await deps.reviews.list_reviews(signed.identity, mine=True, limit=MY_REQUESTS)
        return {"requests": found, "digest": _digest(found), "poll": POLL_SECONDS}

    async def whole(request: Request, signed: Signed, status: int = 200, **extra: Any) -> Response:
        context = {"notice": None, "error": None, "minted": None, **extra}
        return page(
            "connections.html",
            status,
            signed=signed,
            csrf=signed.csrf,
            **await listed(request, signed),
            **await mine(signed),
            **context,
        )

    def flash(request: Request, error: str) -> Response | None:
        """An htmx call's error, shown in the page's flash (htmx swaps only 2xx)."""
        if not request.headers.get("hx-request"):
            return None
        response = page("_flash.html", error=error)
        response.headers["HX-Retarget"] = "#flash"
        response.headers["HX-Reswap"] = "innerHTML"
        return response

    async def connections_page(request: Request, signed: Signed) -> Response:
        return await whole(request, signed)

    async def my_requests(request: Request, signed: Signed) -> Response:
        context = await mine(signed)
        if request.query_params.get("seen") == context["digest"]:
            response = Response(status_code=204)  # nothing changed: htmx leaves the page
            response.headers.update(HEADERS)
            return response
        return page("_my_requests.html", **context)

    async def mint(request: Request) -> Response:
        checked, _ = await posted(request)
        if isinstance(checked, Response):
            return checked
        name = request.path_params["name"]
        record = await deps.store.io.read(deps.store.connections.get, name)
        if deps.identity is None or record is None:
            error = (
                "identity services are not configured"
                if deps.identity is None
                else f"connection {name!r} does not exist"
            )
            return flash(request, error) or await whole(request, checked, 404, error=error)
        try:  # the API's own call: the same grant check, expiry and audit
            token, expires = await deps.identity.connection_credential(checked.identity, name)
        except IdentityError as exc:
            error = f"{name}: {exc.message}"
            return flash(request, error) or await whole(request, checked, exc.status, error=error)
        minted: dict[str, Any] = {"name": name, "token": token, "expires": expires}
        if record.type == "postgres":
            host, port = _public(request)
            params = libpq_params(host, port, name, checked.identity.user, CA_FILE)
            minted["conninfo"] = conninfo({**params, "password": token})
        if request.headers.get("hx-request"):
            return page("_credential.html", minted=minted)
        return await whole(request, checked, minted=minted)

    async def ask(request: Request) -> Response:
        checked, form = await posted(request)
        if isinstance(checked, Response):
            return checked
        name = request.path_params["name"]
        minutes = _minutes(form.get("minutes"))
        error = notice = None
        status = 200
        if deps.reviews is None:
            error, status = "approvals are not enabled on this gateway", 404
        elif minutes is None:
            error, status = f"minutes: a whole number from 1 to {MAX_MINUTES}", 422
        else:
            try:  # the API's own call: the grant's terms, its approvers, the audit
                record = await deps.reviews.request_access(
                    checked.identity,
                    connection=name,
                    duration=minutes * 60,
                    reason=form.get("reason"),
                )
                notice = f"Requested {name} for {minutes} min: {record.id} waits for approval."
            except ReviewError as exc:
                error, status = f"{name}: {exc.message}", exc.status
        if error is not None and (shown := flash(request, error)) is not None:
            return shown
        if request.headers.get("hx-request"):
            response = page("_flash.html", notice=notice, error=None)
            response.headers["HX-Trigger"] = "wardgate-requested"  # "My requests" refreshes
            return response
        return await whole(request, checked, status, notice=notice, error=error)

    api.add_api_route("/console/connections", signed_in(connections_page), methods=["GET"])
    api.add_api_route("/console/connections/mine", signed_in(my_requests), methods=["GET"])
    api.add_api_route("/console/connections/{name}/credential", mint, methods=["POST"])
    api.add_api_route("/console/connections/{name}/request", ask, methods=["POST"])
