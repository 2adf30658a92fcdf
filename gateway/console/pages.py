"""The console's routes (see the package docstring for the design).

GET  /                          303 to /console/
GET  /console/                  the Reviewer page when signed in, else the sign-in page
GET  /console/login[?next=]     sign-in: local user, password, TOTP code
POST /console/login             (same origin) a console session, cookie set; then to `next`
                                when it is a /console/ path (auth.safe_next), else Reviewer
POST /console/logout            (CSRF) the session revoked, its sign-in ended
GET  /console/reviews           the Reviewer page: reviews waiting for the signed-in user
GET  /console/reviews/list      its list (htmx polls it; 204 while nothing changed)
GET  /console/reviews/{id}      one review in full, with the requester's recent activity
                                (review.py); the webhook's link to it
POST /console/reviews/{id}/vote (CSRF) `vote`=approve|deny, `reason`: ReviewService.vote
GET  /console/admin             the Operator page's old address (a redirect)
GET  /console/sessions[/...]    the Auditor pages (audit.py)
GET  /console/connections       the User page (connections.py)
GET  /console/operator, /console/policy   the Operator pages, session export (operator.py)
GET  /console/static/...        stylesheet and htmx
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

from fastapi import APIRouter, FastAPI, HTTPException, Request, Response
from fastapi.responses import HTMLResponse

from gateway.api.deps import ApiDeps, client_of
from gateway.config import ConsoleConfig
from gateway.console import audit, connections, oidc, operator, review
from gateway.console.auth import (
    HOME,
    ConsoleSessions,
    Signed,
    clear_cookie,
    safe_next,
    same_origin,
    set_cookie,
)
from gateway.console.render import HEADERS, HERE, Static, page, redirect
from gateway.fleet.terminate import Terminator
from gateway.identity.credentials import IdentityError
from gateway.policy.grants import AccessPolicy
from gateway.reviews import ReviewError
from gateway.store import ReviewRecord

CROSS_ORIGIN = (
    "cross-origin request refused: the console takes forms only from its own pages; "
    "open it and try again"
)
MAX_FORM = 16 * 1024  # bytes: a sign-in or a vote with its reason
POLL_SECONDS = 2
CARD_ITEMS = 3  # the requester's latest statements shown on a review's card


class _Form:
    """A url-encoded form body, read with a size bound (no multipart dependency)."""

    def __init__(self, fields: dict[str, list[str]]) -> None:
        self._fields = fields

    @classmethod
    async def read(cls, request: Request) -> _Form:
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_FORM:
                raise HTTPException(413, "form too large")
        return cls(parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True))

    def get(self, name: str) -> str:
        values = self._fields.get(name)
        return values[0] if values else ""


def _digest(records: list[ReviewRecord]) -> str:
    text = "|".join(f"{r.id}:{r.status}:{len(r.votes)}" for r in records)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def to_login(request: Request) -> Response:
    """Back to the sign-in page. An htmx call (a poll, a vote) gets no redirect: the
    browser's XMLHttpRequest would follow it and htmx would swap the sign-in page into the
    list; `HX-Redirect` makes htmx move the whole page instead."""
    if request.headers.get("hx-request"):
        response = Response(status_code=200)
        response.headers.update(HEADERS)
        response.headers["HX-Redirect"] = "/console/login"
        return response
    # A page opened signed out (a review link from chat) is where the sign-in returns to;
    # the Reviewer page is where it lands anyway.
    wanted = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    if request.method == "GET" and wanted != HOME and safe_next(wanted):
        return redirect("/console/login?" + urlencode({"next": wanted}))
    return redirect("/console/login")


def router(
    deps: ApiDeps,
    sessions: ConsoleSessions,
    recordings: Path | None = None,
    terminator: Terminator | None = None,
) -> APIRouter:
    api = APIRouter(include_in_schema=False)

    async def signed_or_none(request: Request) -> Signed | None:
        return await sessions.signed(request)

    def refused(request: Request, status: int, message: str) -> HTMLResponse:
        if request.headers.get("hx-request"):  # htmx swaps only 2xx: say it in the page
            response = page("_flash.html", error=message)
            response.headers["HX-Retarget"] = "#flash"
            response.headers["HX-Reswap"] = "innerHTML"
            return response
        return page("error.html", status, title="Refused", message=message, signed=None)

    async def checked_post(request: Request, form: _Form) -> Signed | Response:
        """The signed-in person behind a POST with its CSRF token, from this origin."""
        if not same_origin(request):
            return refused(request, 403, CROSS_ORIGIN)
        signed = await sessions.signed(request)
        if signed is None:
            return to_login(request)
        sent = request.headers.get("x-csrf-token") or form.get("csrf")
        if not sent or not hmac.compare_digest(sent, signed.csrf):
            return refused(
                request, 403, "missing or wrong CSRF token: reload the page and try again"
            )
        return signed

    async def posted(request: Request) -> tuple[Signed | Response, _Form]:
        form = await _Form.read(request)
        return await checked_post(request, form), form

    def signed_in(
        handler: Callable[[Request, Signed], Awaitable[Response]],
    ) -> Callable[[Request], Awaitable[Response]]:
        async def wrapped(request: Request) -> Response:
            signed = await signed_or_none(request)
            if signed is None:
                return to_login(request)
            return await handler(request, signed)

        return wrapped

    # ---- sign-in -----------------------------------------------------------------------

    @api.get("/console/")
    async def home(request: Request) -> Response:
        signed = await signed_or_none(request)
        return redirect("/console/reviews" if signed else "/console/login")

    @api.get("/console/login")
    async def login_page(request: Request) -> Response:
        wanted = safe_next(request.query_params.get("next"))
        if await signed_or_none(request) is not None:
            return redirect(wanted or HOME)
        return page(
            "login.html",
            local=_local_enabled(deps),
            oidc=_oidc_enabled(deps),
            error=None,
            user="",
            signed=None,
            next=wanted,
        )

    @api.post("/console/login")
    async def login(request: Request) -> Response:
        if not same_origin(request):
            return refused(request, 403, CROSS_ORIGIN)
        form = await _Form.read(request)
        user = form.get("user").strip()
        wanted = safe_next(form.get("next"))  # anything else is ignored: no open redirect
        if deps.identity is None:
            raise HTTPException(404, "identity services are not configured")
        limiter = deps.limiter
        attempt = (  # the API's rate limits, charged to the same keys
            limiter.attempt(request, "local", identity=f"local:{user}")
            if limiter is not None
            else contextlib.nullcontext()
        )
        try:
            async with attempt:
                issued = await deps.identity.local_login(
                    user=user,
                    password=form.get("password"),
                    code=form.get("code").strip(),
                    client=client_of(request),
                )
        except IdentityError as exc:
            return _login_failed(deps, exc.status, exc.message, user, wanted)
        except HTTPException as exc:  # 429 from the rate limits
            return _login_failed(deps, exc.status_code, str(exc.detail), user, wanted)
        assert issued.login_id is not None  # a person's sign-in always has one
        cookie, session_id = await sessions.create(issued.user, issued.login_id)
        await deps.auditor.record(
            "console.login",
            actor=issued.user,
            console_session=session_id,
            login=issued.login_id,
            client=client_of(request),
        )
        response = redirect(wanted or HOME)
        set_cookie(response, cookie)
        return response

    @api.post("/console/logout")
    async def logout(request: Request) -> Response:
        form = await _Form.read(request)
        checked = await checked_post(request, form)
        if isinstance(checked, Response):
            return checked
        await sessions.revoke(checked.session_id)
        if deps.identity is not None:
            await deps.identity.logout(checked.identity)
        await deps.auditor.record(
            "console.logout", actor=checked.identity.user, console_session=checked.session_id
        )
        response = redirect("/console/login")
        clear_cookie(response)
        return response

    # ---- the Reviewer page ------------------------------------------------------------

    async def waiting(signed: Signed) -> tuple[list[ReviewRecord], list[ReviewRecord]]:
        """Pending reviews the user may see: others' (to vote on) and their own."""
        service = deps.reviews
        if service is None:
            return [], []
        found = await service.list_reviews(signed.identity, status="pending", limit=200)
        me = signed.identity.user
        return [r for r in found if r.requester != me], [r for r in found if r.requester == me]

    async def review_list(
        signed: Signed,
        *,
        notice: str | None = None,
        error: str | None = None,
        seen: str | None = None,
    ) -> dict[str, Any]:
        """The list's context; with `seen`, only the digest when it still matches (a poll
        with nothing new reads no activity)."""
        others, mine = await waiting(signed)
        digest = _digest(others + mine)
        if seen == digest:
            return {"digest": digest}
        activity = {  # each card's glance at what the requester ran there lately
            r.id: [
                item
                for found in await review.recent_activity(deps, r, sessions=3, per=CARD_ITEMS)
                for item in found["done"]
            ][:CARD_ITEMS]
            for r in others
        }
        return {
            "others": others,
            "mine": mine,
            "activity": activity,
            "digest": digest,
            "notice": notice,
            "error": error,
            "enabled": deps.reviews is not None,
            "poll": POLL_SECONDS,
            "csrf": signed.csrf,
        }

    async def reviews_page(request: Request, signed: Signed) -> Response:
        return page("reviews.html", signed=signed, **await review_list(signed))

    async def reviews_fragment(request: Request, signed: Signed) -> Response:
        seen = request.query_params.get("seen")
        context = await review_list(signed, seen=seen)
        if seen == context["digest"]:
            response = Response(status_code=204)  # nothing changed: htmx leaves the page
            response.headers.update(HEADERS)
            return response
        return page("_reviews.html", **context)

    api.add_api_route("/console/reviews", signed_in(reviews_page), methods=["GET"])
    api.add_api_route("/console/reviews/list", signed_in(reviews_fragment), methods=["GET"])
    review.add_routes(api, deps, signed_in)  # after /list: `{review_id}` would take it

    @api.post("/console/reviews/{review_id}/vote")
    async def vote(review_id: str, request: Request) -> Response:
        form = await _Form.read(request)
        checked = await checked_post(request, form)
        if isinstance(checked, Response):
            return checked
        choice = form.get("vote")
        notice = error = None
        status = 200
        if deps.reviews is None:
            error, status = "approvals are not enabled on this gateway", 404
        else:
            try:  # the API's own call: the same segregation-of-duties rules and audit
                record = await deps.reviews.vote(
                    checked.identity, review_id, choice, form.get("reason")
                )
                done = "approved" if choice == "approve" else "denied"
                notice = f"You {done} {review_id} (now {record.status})."
            except ReviewError as exc:
                error = f"{review_id}: {exc.message}"
                status = exc.status
        if not request.headers.get("hx-request"):
            context = await review_list(checked, notice=notice, error=error)
            return page("reviews.html", status, signed=checked, **context)
        return page("_reviews.html", **await review_list(checked, notice=notice, error=error))

    # The first admin page, now part of the Operator page: old links still land.
    api.add_api_route("/console/admin", lambda: redirect("/console/operator"), methods=["GET"])
    oidc.add_routes(api, deps, sessions)
    audit.add_routes(api, deps, signed_in, recordings)
    connections.add_routes(api, deps, signed_in, posted)
    operator.add_routes(api, deps, signed_in, posted, terminator, recordings)
    return api


def _local_enabled(deps: ApiDeps) -> bool:
    return deps.identity is not None and bool(deps.identity.methods().get("local"))


def _oidc_enabled(deps: ApiDeps) -> bool:
    return deps.identity is not None and deps.identity.oidc is not None


def _login_failed(
    deps: ApiDeps, status: int, message: str, user: str, wanted: str | None
) -> HTMLResponse:
    return page(
        "login.html",
        status,
        local=_local_enabled(deps),
        oidc=_oidc_enabled(deps),
        error=message,
        user=user,
        signed=None,
        next=wanted,
    )


def mount(
    app: FastAPI,
    deps: ApiDeps,
    config: ConsoleConfig,
    recordings: Path | None = None,
    terminator: Terminator | None = None,
) -> None:
    """Serve the console on `app` (the public port's), and send `/` to it; `recordings` is
    where SSH terminal recordings are kept (the session page replays them); `terminator`
    ends live sessions (the Operator page)."""
    if not config.enabled:
        return
    sessions = ConsoleSessions(deps.store, deps.access or AccessPolicy(), config.idle_timeout)
    app.include_router(router(deps, sessions, recordings, terminator))
    app.mount("/console/static", Static(directory=HERE / "static"), name="console-static")

    @app.get("/", include_in_schema=False)
    async def root() -> Response:
        return redirect("/console/")
