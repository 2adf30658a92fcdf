"""Console sign-ins: a server-side session behind a cookie, CSRF tokens, the origin check.

    sign in     `IdentityService.local_login` (the API's own path: rate limits, TOTP,
                `auth.login`), then a console session in the store: the cookie carries 256
                random bits, the store their SHA-256 (`Store.console`), so any member of a
                fleet accepts it and a copy of the store opens nothing
    each call   the session, its sign-in (`logins`) and its user are read back and must all
                still be valid (not revoked, not idle, user not disabled), then become the
                `Identity` every authorisation check of the API takes
    sign out    the console session is revoked and its sign-in ended (`IdentityService.logout`:
                `auth.logout`, the sign-in's sessions ended)
    POST        needs the page's CSRF token (`X-CSRF-Token` from htmx, or the `csrf` field of a
                plain form) and a same-origin `Origin` (or `Sec-Fetch-Site: same-origin`)

The CSRF token is an HMAC of the cookie, so it is bound to the session, needs no storage,
and is worthless without the cookie, which scripts cannot read (HttpOnly).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from fastapi import Request, Response

from gateway.auth import Identity
from gateway.crypto import hash_token
from gateway.policy.grants import AccessPolicy
from gateway.store import Store

COOKIE = "__Secure-wardgate-console"  # the prefix makes browsers insist on Secure
PATH = "/console"
TOUCH_INTERVAL = 30.0  # seconds: how stale the idle clocks may get (a write at most this often)
MAX_COOKIE = 128
MAX_IDLE = 86400  # seconds: the longest idle timeout the configuration allows


@dataclass(frozen=True, slots=True)
class Signed:
    """A request's signed-in person: who, and the token its forms must send back."""

    identity: Identity
    session_id: str  # public, for the audit log
    csrf: str


def csrf_token(cookie: str) -> str:
    return hmac.new(cookie.encode(), b"wardgate console csrf", hashlib.sha256).hexdigest()


def set_cookie(response: Response, cookie: str) -> None:
    # A browser-session cookie (no Max-Age): the idle timeout is the server's to enforce,
    # on every request, since a cookie's lifetime does not move with use.
    response.set_cookie(
        COOKIE,
        cookie,
        path=PATH,
        secure=True,
        httponly=True,
        samesite="strict",
    )


def clear_cookie(response: Response) -> None:
    response.delete_cookie(COOKIE, path=PATH, secure=True, httponly=True, samesite="strict")


_NEXT = re.compile(r"/console/[A-Za-z0-9._~/%-]*(\?[A-Za-z0-9._~=&%+-]*)?")
HOME = "/console/reviews"  # where a sign-in lands without a `next`


def safe_next(value: str | None) -> str | None:
    """`value` when it is a path of this console (`/console/...`), else None: a `next` that
    names another site, a scheme, `//host`, a backslash or `..` is ignored (no open redirect)."""
    if not value or len(value) > 512 or not _NEXT.fullmatch(value):
        return None
    path = value.split("?", 1)[0]
    if "//" in path or ".." in path or "%" in path:
        return None
    return value


_HOST = re.compile(r"[A-Za-z0-9.-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")


def request_host(request: Request) -> str | None:
    """The host (and port) the browser asked for, when it is one."""
    host = request.headers.get("host", "")
    return host if len(host) < 256 and _HOST.fullmatch(host) else None


def same_origin(request: Request) -> bool:
    """The request comes from a page of this gateway. Browsers send `Origin` on every POST;
    without it, `Sec-Fetch-Site` must say so. Neither: refused (fail closed)."""
    origin = request.headers.get("origin")
    host = request_host(request)
    if origin is not None:
        return host is not None and hmac.compare_digest(origin, f"https://{host}")
    return request.headers.get("sec-fetch-site") == "same-origin"


class ConsoleSessions:
    def __init__(self, store: Store, access: AccessPolicy, idle_timeout: int) -> None:
        self._store = store
        self._access = access
        self.idle_timeout = idle_timeout

    async def create(self, user: str, login_id: str) -> tuple[str, str]:
        """A new session of `user` on sign-in `login_id`: (cookie value, public id)."""
        cookie = secrets.token_urlsafe(32)
        # Sessions idle for longer than any idle timeout allows open nothing: forgotten here,
        # on sign-in, so the table stays the size of its live sessions.
        stale = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=MAX_IDLE)
        await self._store.io.write(self._store.console.prune, stale)
        record = await self._store.io.write(
            self._store.console.create,
            hash_token(cookie),
            user,
            login_id,
            idle_timeout=self.idle_timeout,
        )
        return cookie, record.id

    async def signed(self, request: Request) -> Signed | None:
        """The request's signed-in person, or None (no cookie, or it opens nothing now)."""
        cookie = request.cookies.get(COOKIE)
        if not cookie or len(cookie) > MAX_COOKIE:
            return None
        found = await self._store.io.read(self._store.console.find, hash_token(cookie))
        if found is None:
            return None
        session, user, login = found
        now = dt.datetime.now(dt.UTC)
        if not session.valid_at(now) or login is None or not login.valid_at(now):
            return None
        if user.disabled:
            return None
        # The idle clocks move at most every TOUCH_INTERVAL: a page polling every 2 s writes
        # to the store twice a minute at most, not on every poll.
        stale = now - dt.timedelta(seconds=TOUCH_INTERVAL)
        if session.last_seen_at <= stale:
            await self._store.io.write(
                self._store.console.touch, session.id, min_interval=TOUCH_INTERVAL
            )
        if login.last_seen_at <= stale:
            await self._store.io.write(
                self._store.identity.touch_login, login.id, min_interval=TOUCH_INTERVAL
            )
        identity = Identity(
            user=user.name,
            is_admin=user.is_admin or self._access.is_admin(user.name, user.groups),
            groups=user.groups,
            token_id=session.id,
            kind=user.kind,
            login_id=login.id,
            credential="console",
        )
        return Signed(identity, session.id, csrf_token(cookie))

    async def revoke(self, session_id: str) -> None:
        await self._store.io.write(self._store.console.revoke, session_id)
