"""Console sign-in through the OpenID provider: authorization code with PKCE, in the browser.

    GET /console/login/oidc            state, nonce and PKCE verifier in a short-lived cookie;
                                       303 to the provider (`IdentityService`'s URL, as for
                                       `wardgate login`)
    GET /console/login/oidc/callback   the state must match the cookie's; the code is
                                       exchanged by `IdentityService.oidc_code_login` (the
                                       CLI's path: claims, groups, `auth.login`); then a
                                       console session as for local users

The flow cookie is `SameSite=Lax` because the callback arrives as a navigation from the
provider's site, which a Strict cookie would not follow. For the same reason the console
session's Strict cookie, set on that cross-site navigation, is first sent by the next,
same-site one: the callback answers with a page that moves on by itself (a meta refresh; no
script).
"""

from __future__ import annotations

import contextlib
import hmac
import secrets

from authlib.oauth2.rfc7636 import create_s256_code_challenge
from fastapi import APIRouter, HTTPException, Request, Response

from gateway.api.deps import ApiDeps, client_of
from gateway.console.auth import ConsoleSessions, request_host, set_cookie
from gateway.console.render import page, redirect
from gateway.identity.credentials import CONSOLE_CALLBACK, IdentityError

FLOW_COOKIE = "__Secure-wardgate-console-oidc"
FLOW_PATH = "/console/login/oidc"
FLOW_TTL = 600  # seconds a sign-in at the provider may take


def _flow_cookie(response: Response, value: str) -> None:
    response.set_cookie(
        FLOW_COOKIE,
        value,
        max_age=FLOW_TTL,
        path=FLOW_PATH,
        secure=True,
        httponly=True,
        samesite="lax",
    )


def add_routes(api: APIRouter, deps: ApiDeps, sessions: ConsoleSessions) -> None:
    def attempt(request: Request, endpoint: str) -> contextlib.AbstractAsyncContextManager[None]:
        if deps.limiter is None:
            return contextlib.nullcontext()
        return deps.limiter.attempt(request, endpoint)  # the API's own limits

    def failed(status: int, message: str) -> Response:
        return page(
            "login.html", status, local=False, oidc=True, error=message, user="", signed=None
        )

    def callback_uri(request: Request) -> str | None:
        host = request_host(request)
        return None if host is None else f"https://{host}{CONSOLE_CALLBACK}"

    @api.get(FLOW_PATH)
    async def start(request: Request) -> Response:
        identity = deps.identity
        redirect_uri = callback_uri(request)
        if identity is None or identity.oidc is None or redirect_uri is None:
            return failed(404, "this gateway has no identity provider configured")
        state, nonce, verifier = (secrets.token_urlsafe(32) for _ in range(3))
        try:
            async with attempt(request, "oidc_authorize"):
                url = await identity.oidc_authorization_url(
                    redirect_uri=redirect_uri,
                    state=state,
                    nonce=nonce,
                    code_challenge=create_s256_code_challenge(verifier),
                    console=True,
                )
        except IdentityError as exc:
            return failed(exc.status, exc.message)
        except HTTPException as exc:  # 429 from the rate limits
            return failed(exc.status_code, str(exc.detail))
        response = redirect(url)
        _flow_cookie(response, f"{state}.{nonce}.{verifier}")
        return response

    @api.get(CONSOLE_CALLBACK)
    async def callback(request: Request) -> Response:
        identity = deps.identity
        redirect_uri = callback_uri(request)
        if identity is None or redirect_uri is None:
            return failed(404, "this gateway has no identity provider configured")
        params = request.query_params
        if "error" in params:  # the person said no at the provider, or it refused
            why = params.get("error_description") or params["error"]
            return failed(401, f"sign-in refused by the identity provider: {why[:200]}")
        flow = (request.cookies.get(FLOW_COOKIE) or "").split(".")
        state, code = params.get("state", ""), params.get("code", "")
        if len(flow) != 3 or not state or not hmac.compare_digest(flow[0], state):
            return failed(400, "this sign-in was not started here or took too long: start again")
        if not code or len(code) > 4096:
            return failed(400, "the identity provider sent no code: start again")
        try:
            async with attempt(request, "oidc_callback"):
                issued = await identity.oidc_code_login(
                    code=code,
                    redirect_uri=redirect_uri,
                    code_verifier=flow[2],
                    nonce=flow[1],
                    client=client_of(request),
                    console=True,
                )
        except IdentityError as exc:
            return failed(exc.status, exc.message)
        except HTTPException as exc:
            return failed(exc.status_code, str(exc.detail))
        assert issued.login_id is not None
        cookie, session_id = await sessions.create(issued.user, issued.login_id)
        await deps.auditor.record(
            "console.login",
            actor=issued.user,
            console_session=session_id,
            login=issued.login_id,
            method="oidc",
            client=client_of(request),
        )
        response = page("signed_in.html", signed=None, user=issued.user)
        set_cookie(response, cookie)
        response.delete_cookie(FLOW_COOKIE, path=FLOW_PATH, secure=True, httponly=True)
        return response
