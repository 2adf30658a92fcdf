"""Sign-ins and the gateway credentials issued under them: `IdentityService`.

Every successful sign-in (OIDC authorization code, OIDC device flow, local password + TOTP,
workload token exchange) creates a *login*: the gateway's own session, independent of the
IdP token's lifetime, with an absolute expiry (`session_ttl`) and an idle timeout. Under it
the gateway issues an access credential (`wgt_`, `ttl`) and a refresh token (`wgr_`).

Refreshing rotates the refresh token: each one works once. Presenting one that was already
used is a replay (a stolen copy, or a client that lost track) and revokes the whole login.
For an OIDC login the refresh also refreshes at the IdP with the login's IdP refresh token
(stored sealed) and re-reads the user's claims, so a group change at the provider takes
effect at the next refresh, and a user the provider no longer accepts loses the login.

Per-connection credentials (`wgt_`, minutes) are minted from a valid credential for one
connection; `wardgate creds` and `wardgate psql` put those in libpq, never the sign-in's.

Revoking a login, a token, or disabling a user also ends the live sessions opened with the
affected credentials (through the session broker's `terminate`). Every sign-in success and
failure is an audit event (`auth.login`, `auth.failed`, `auth.refresh`, `auth.replay`,
`credential.revoked`, `user.disabled`...); no token, code or password is ever in one.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, Protocol
from urllib.parse import urlsplit

import httpx

from gateway.audit import Auditor, Event
from gateway.auth import API_KEY_PREFIX, REFRESH_PREFIX, TOKEN_PREFIX, Identity
from gateway.config import ConfigError, IdentityConfig, OIDCConfig, WorkloadTrust, resolve_secret
from gateway.crypto import SecretBox, SecretBoxError, hash_token, new_token
from gateway.identity import claims as cl
from gateway.identity import local
from gateway.identity.oidc import (
    FlowPending,
    OidcClient,
    ProviderError,
    TokenRejected,
    TokenResponse,
    http_client,
)
from gateway.identity.workload import WorkloadRefused, WorkloadTrusts, single_use_key
from gateway.policy.grants import ADMIN_SCOPE, AccessPolicy
from gateway.store import (
    Conflict,
    LoginRecord,
    NotFound,
    Store,
    StoreError,
    TokenRecord,
    UserRecord,
)

log = logging.getLogger(__name__)

__all__ = ["FlowPending", "IdentityError", "IdentityService", "Issued"]


class IdentityError(Exception):
    """A refusal, with the HTTP status the API answers and words safe for the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Terminator(Protocol):
    def __call__(
        self,
        *,
        reason: str,
        user: str | None = None,
        login_id: str | None = None,
        token_ids: frozenset[str] | None = None,
    ) -> Awaitable[int]: ...


@dataclass(frozen=True, slots=True)
class Issued:
    """A credential bundle handed to a client once; `repr` hides the secrets."""

    user: str
    kind: str
    login_id: str | None
    token: str = field(repr=False)
    expires_at: dt.datetime | None
    groups: tuple[str, ...] = ()
    refresh_token: str | None = field(default=None, repr=False)
    refresh_expires_at: dt.datetime | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "user": self.user,
            "kind": self.kind,
            "login_id": self.login_id,
            "token": self.token,
            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
            "refresh_token": self.refresh_token,
            "refresh_expires_at": (
                self.refresh_expires_at.isoformat() if self.refresh_expires_at else None
            ),
            "groups": list(self.groups),
        }


def is_loopback_redirect(uri: str) -> bool:
    """RFC 8252 7.3: a native client's redirect goes to a loopback port over plain HTTP."""
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError:
        return False
    return (
        parts.scheme == "http"
        and parts.hostname in ("127.0.0.1", "::1", "localhost")
        and port is not None
        and not parts.fragment
    )


CONSOLE_CALLBACK = "/console/login/oidc/callback"


def is_console_redirect(uri: str) -> bool:
    """The web console's own callback (gateway/console): HTTPS, that path, nothing more.
    Its host is the one the browser asked for; the provider only redirects to the URIs its
    client registration lists, so a wrong host gets no code."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return False
    return (
        parts.scheme == "https"
        and bool(parts.hostname)
        and parts.path == CONSOLE_CALLBACK
        and not parts.query
        and not parts.fragment
    )


def _redirect_allowed(uri: str, console: bool) -> bool:
    return is_console_redirect(uri) if console else is_loopback_redirect(uri)


class IdentityService:
    def __init__(
        self,
        store: Store,
        auditor: Auditor,
        config: IdentityConfig,
        *,
        policy: AccessPolicy,
        box: SecretBox | None,
        terminate: Terminator | None = None,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self._store = store
        self._audit = auditor
        self.config = config
        self._policy = policy
        self._box = box
        self._terminate = terminate
        self._clock = clock
        self._oidc: OidcClient | None = None
        self._http_clients: list[Any] = []
        if config.oidc is not None:
            if box is None:
                raise ConfigError(
                    "identity.oidc needs secret_key (or WARDGATE_SECRET_KEY): the IdP's "
                    "refresh tokens are stored sealed"
                )
            self._oidc = self._oidc_client(config.oidc)
        if config.local_users and box is None:
            raise ConfigError(
                "identity.local_users needs secret_key (or WARDGATE_SECRET_KEY): TOTP secrets "
                "are stored sealed"
            )
        self._workload = WorkloadTrusts(config.workload, self._http_client)

    def _oidc_client(self, cfg: OIDCConfig) -> OidcClient:
        http = http_client(cfg.ca_file)
        self._http_clients.append(http)
        return OidcClient(
            issuer=cfg.issuer,
            client_id=cfg.client_id,
            client_secret=resolve_secret(cfg.client_secret) if cfg.client_secret else None,
            scopes=cfg.scopes,
            algorithms=cfg.algorithms,
            leeway=cfg.leeway,
            http=http,
            jwks_min_refresh=cfg.jwks_min_refresh,
            jwks_max_age=cfg.jwks_max_age,
        )

    def _http_client(self, ca_file: Path | None) -> httpx.AsyncClient:
        http = http_client(ca_file)
        self._http_clients.append(http)
        return http

    async def aclose(self) -> None:
        for http in self._http_clients:
            await http.aclose()

    @property
    def oidc(self) -> OidcClient | None:
        return self._oidc

    def methods(self) -> dict[str, Any]:
        return {
            "oidc": self._oidc is not None,
            "issuer": self._oidc.issuer if self._oidc else None,
            "workload": bool(self.config.workload),
            "local": self.config.local_users,
        }

    # ---- helpers ---------------------------------------------------------------------

    async def _failed(self, method: str, reason: str, client: str, **extra: Any) -> None:
        await self._audit.record(
            "auth.failed", actor=str(extra.pop("user", "-")), method=method, reason=reason,
            client=client, **extra,
        )  # fmt: skip

    def _seal(self, value: str | None, login_context: str) -> str | None:
        if value is None or self._box is None:
            return None
        return self._box.seal(value.encode(), context=login_context)

    def _open(self, value: str | None, login_context: str) -> str | None:
        if value is None or self._box is None:
            return None
        try:
            return self._box.open(value, context=login_context).decode()
        except SecretBoxError:
            return None

    async def _issue(
        self,
        user: UserRecord,
        *,
        method: str,
        client: str,
        issuer: str | None = None,
        subject: str | None = None,
        idp_refresh_token: str | None = None,
        ttl: int | None = None,
        session_ttl: int | None = None,
        refreshable: bool = True,
    ) -> Issued:
        cfg = self.config.credentials
        now = self._clock()
        expires = now + dt.timedelta(seconds=session_ttl or cfg.session_ttl)
        login: LoginRecord = await self._store.io.write(
            self._store.identity.create_login,
            user.name,
            method=method,
            expires_at=expires,
            idle_timeout=cfg.idle_timeout,
            issuer=issuer,
            subject=subject,
        )
        if idp_refresh_token is not None:
            sealed = self._seal(idp_refresh_token, f"login/{login.id}/idp_refresh")
            await self._store.io.write(self._store.identity.set_login_idp_refresh, login.id, sealed)
        issued = await self._tokens(user, login, ttl=ttl, refreshable=refreshable)
        await self._audit.record(
            "auth.login",
            actor=user.name,
            method=method,
            login=login.id,
            user_kind=user.kind,
            groups=list(user.groups),
            client=client,
        )
        return issued

    async def _tokens(
        self, user: UserRecord, login: LoginRecord, *, ttl: int | None, refreshable: bool
    ) -> Issued:
        issued: Issued = await self._store.io.write(
            self._mint, user, login, ttl=ttl, refreshable=refreshable
        )
        return issued

    def _mint(
        self, user: UserRecord, login: LoginRecord, *, ttl: int | None, refreshable: bool
    ) -> Issued:
        """Blocking: new credentials under `login` (in the caller's store transaction, if any)."""
        now = self._clock()
        access_expires = min(
            now + dt.timedelta(seconds=ttl or self.config.credentials.ttl), login.expires_at
        )
        access = new_token(TOKEN_PREFIX)
        self._store.identity.add_token(
            user.name,
            hash_token(access),
            expires_at=access_expires,
            kind="access",
            login_id=login.id,
            label=login.method,
        )
        refresh: str | None = None
        if refreshable:
            refresh = new_token(REFRESH_PREFIX)
            self._store.identity.add_token(
                user.name,
                hash_token(refresh),
                expires_at=login.expires_at,
                kind="refresh",
                login_id=login.id,
                label=login.method,
            )
        return Issued(
            user=user.name,
            kind=user.kind,
            login_id=login.id,
            token=access,
            expires_at=access_expires,
            groups=user.groups,
            refresh_token=refresh,
            refresh_expires_at=login.expires_at if refreshable else None,
        )

    async def _end_sessions(
        self,
        reason: str,
        *,
        user: str | None = None,
        login_id: str | None = None,
        token_ids: frozenset[str] | None = None,
    ) -> int:
        if self._terminate is None:
            return 0
        return await self._terminate(
            reason=reason, user=user, login_id=login_id, token_ids=token_ids
        )

    # ---- people: OIDC ----------------------------------------------------------------

    def _require_oidc(self) -> OidcClient:
        if self._oidc is None:
            raise IdentityError(404, "this gateway has no identity provider configured")
        return self._oidc

    async def oidc_authorization_url(
        self,
        *,
        redirect_uri: str,
        state: str,
        nonce: str,
        code_challenge: str,
        console: bool = False,  # the web console's callback instead of the CLI's loopback
    ) -> str:
        oidc = self._require_oidc()
        if not _redirect_allowed(redirect_uri, console):
            raise IdentityError(422, "redirect_uri must be http://127.0.0.1:PORT/... (loopback)")
        if len(code_challenge) < 43 or len(nonce) < 16 or len(state) < 16:
            raise IdentityError(422, "state, nonce and PKCE code challenge are required")
        try:
            return await oidc.authorization_url(
                redirect_uri=redirect_uri, state=state, nonce=nonce, code_challenge=code_challenge
            )
        except ProviderError as exc:
            raise IdentityError(502, str(exc)) from None

    async def oidc_code_login(
        self,
        *,
        code: str,
        redirect_uri: str,
        code_verifier: str,
        nonce: str,
        client: str,
        console: bool = False,
    ) -> Issued:
        oidc = self._require_oidc()
        if not _redirect_allowed(redirect_uri, console):
            raise IdentityError(422, "redirect_uri must be a loopback address")
        try:
            tokens = await oidc.exchange_code(
                code=code, redirect_uri=redirect_uri, code_verifier=code_verifier
            )
            user, claims = await self._person(oidc, tokens, nonce=nonce)
        except (TokenRejected, cl.ClaimsError, IdentityError) as exc:
            reason = exc.reason if isinstance(exc, TokenRejected) else str(exc)
            await self._failed("oidc", reason, client)
            raise IdentityError(401, f"sign-in refused: {reason}") from None
        except ProviderError as exc:
            await self._failed("oidc", str(exc), client)
            raise IdentityError(502, str(exc)) from None
        return await self._issue(
            user,
            method="oidc",
            client=client,
            issuer=oidc.issuer,
            subject=str(claims["sub"]),
            idp_refresh_token=tokens.refresh_token,
        )

    async def oidc_device_start(self) -> dict[str, Any]:
        oidc = self._require_oidc()
        try:
            answer = await oidc.device_authorization()
        except ProviderError as exc:
            raise IdentityError(501 if "does not support" in str(exc) else 502, str(exc)) from None
        keep = (
            "device_code",
            "user_code",
            "verification_uri",
            "verification_uri_complete",
            "expires_in",
            "interval",
        )
        return {k: answer[k] for k in keep if k in answer}

    async def oidc_device_poll(self, *, device_code: str, client: str) -> Issued:
        oidc = self._require_oidc()
        try:
            tokens = await oidc.poll_device(device_code)
            user, claims = await self._person(oidc, tokens, nonce=None)
        except FlowPending:
            raise
        except (TokenRejected, cl.ClaimsError, IdentityError) as exc:
            reason = exc.reason if isinstance(exc, TokenRejected) else str(exc)
            await self._failed("device", reason, client)
            raise IdentityError(401, f"sign-in refused: {reason}") from None
        except ProviderError as exc:
            await self._failed("device", str(exc), client)
            raise IdentityError(502, str(exc)) from None
        return await self._issue(
            user,
            method="device",
            client=client,
            issuer=oidc.issuer,
            subject=str(claims["sub"]),
            idp_refresh_token=tokens.refresh_token,
        )

    async def _claims(
        self, oidc: OidcClient, tokens: TokenResponse, *, nonce: str | None, sub: str | None
    ) -> dict[str, Any]:
        """Verified ID token claims, completed by userinfo (same subject) when available."""
        claims: dict[str, Any] = {}
        if tokens.id_token is not None:
            claims = await oidc.validator.validate(tokens.id_token, nonce=nonce)
            if sub is not None and claims["sub"] != sub:
                raise TokenRejected("the provider answered for another subject")
        elif sub is None:
            raise TokenRejected("the provider returned no ID token")
        metadata = await oidc.discovery.metadata()
        if metadata.userinfo_endpoint is not None:
            info = await oidc.userinfo(tokens.access_token)
            expected = claims.get("sub", sub)
            if info.get("sub") != expected:
                # OIDC Core 5.3.2: userinfo for another subject must not be used.
                raise TokenRejected("userinfo answered for another subject")
            claims = {**info, **{k: v for k, v in claims.items() if k not in info}}
        if "sub" not in claims:
            claims["sub"] = sub
        return claims

    async def _person(
        self, oidc: OidcClient, tokens: TokenResponse, *, nonce: str | None
    ) -> tuple[UserRecord, dict[str, Any]]:
        cfg = self.config.oidc
        assert cfg is not None
        claims = await self._claims(oidc, tokens, nonce=nonce, sub=None)
        name = cl.user_name(claims, cfg.username_claim)
        groups = cl.groups_from(claims, cfg.groups_claim, cfg.claim_groups)
        try:
            user: UserRecord = await self._store.io.write(
                self._store.identity.bind_person,
                name,
                issuer=oidc.issuer,
                subject=str(claims["sub"]),
                groups=groups,
            )
        except Conflict as exc:
            raise IdentityError(403, str(exc)) from None
        if user.disabled:
            raise IdentityError(403, f"user {name!r} is disabled")
        return user, claims

    # ---- refresh ---------------------------------------------------------------------

    async def refresh(self, refresh_token: str, *, client: str) -> Issued:
        if not refresh_token.startswith(REFRESH_PREFIX) or len(refresh_token) > 256:
            await self._failed("refresh", "malformed refresh token", client)
            raise IdentityError(401, "refresh refused: malformed refresh token")
        found = await self._store.io.read(
            self._store.identity.find_credential, hash_token(refresh_token)
        )
        if found is None or found[0].kind != "refresh" or found[2] is None:
            await self._failed("refresh", "unknown refresh token", client)
            raise IdentityError(401, "refresh refused: unknown refresh token")
        token, user, login = found
        assert login is not None  # found[2] checked above
        now = self._clock()
        why: str | None = None
        if token.revoked_at is not None:
            if login.revoked_at is None:
                await self._replayed(login, client)
            why = "sign-in revoked"
        elif not token.valid_at(now):
            why = "refresh token expired"
        elif not login.valid_at(now):
            why = login.why_invalid(now)
        elif user.disabled:
            why = "user disabled"
        if why is not None:
            await self._failed("refresh", why, client, user=user.name, login=login.id)
            raise IdentityError(401, f"refresh refused: {why}")
        if login.method in ("oidc", "device"):
            # The provider first: a refresh it cannot answer (an outage) leaves the refresh
            # token unspent, so the client's retry is a refresh, not a replay.
            user = await self._refresh_at_idp(user, login, client)
        refreshed = user

        def rotate() -> Issued | None:
            # The old token is spent only with the new ones issued and the event written:
            # one store transaction, so a failure anywhere leaves the old token valid and
            # the client's retry is a refresh, not a replay.
            if not self._store.identity.revoke_token_if_live(token.id):
                return None  # a concurrent use won the rotation
            self._store.identity.touch_login(login.id)
            return self._mint(refreshed, login, ttl=None, refreshable=True)

        def recorded(issued: Issued | None) -> list[Event]:
            if issued is None:
                return []
            data = {"login": login.id, "groups": list(refreshed.groups), "client": client}
            return [Event("auth.refresh", refreshed.name, data)]

        issued = await self._audit.change(rotate, recorded)
        if issued is None:
            await self._replayed(login, client)
        return issued

    async def _replayed(self, login: LoginRecord, client: str) -> NoReturn:
        await self._store.io.write(self._store.identity.revoke_login, login.id)
        await self._audit.record(
            "auth.replay",
            actor=login.user,
            login=login.id,
            client=client,
            reason="a used refresh token was presented again; the sign-in is revoked",
        )
        await self._end_sessions("sign-in revoked (refresh token replayed)", login_id=login.id)
        raise IdentityError(401, "refresh refused: refresh token already used; sign in again")

    async def _refresh_at_idp(
        self, user: UserRecord, login: LoginRecord, client: str
    ) -> UserRecord:
        oidc = self._require_oidc()
        cfg = self.config.oidc
        assert cfg is not None
        context = f"login/{login.id}/idp_refresh"
        idp_refresh = self._open(login.idp_refresh_token, context)
        if idp_refresh is None:
            return user  # the provider issued no refresh token: groups stay as signed in
        try:
            tokens = await oidc.refresh(idp_refresh)
            claims = await self._claims(oidc, tokens, nonce=None, sub=login.subject)
            groups = cl.groups_from(claims, cfg.groups_claim, cfg.claim_groups)
            refreshed: UserRecord = await self._store.io.write(
                self._store.identity.bind_person,
                user.name,
                issuer=oidc.issuer,
                subject=str(login.subject),
                groups=groups,
            )
        except (TokenRejected, Conflict, cl.ClaimsError) as exc:
            reason = exc.reason if isinstance(exc, TokenRejected) else str(exc)
            await self._store.io.write(self._store.identity.revoke_login, login.id)
            await self._failed("refresh", reason, client, user=user.name, login=login.id)
            await self._end_sessions("the identity provider refused the sign-in", login_id=login.id)
            raise IdentityError(401, f"refresh refused: {reason}; sign in again") from None
        except ProviderError as exc:
            await self._failed("refresh", str(exc), client, user=user.name, login=login.id)
            raise IdentityError(
                502,
                f"refresh not done: the identity provider is unavailable ({exc}); "
                "your sign-in is kept, try again later",
            ) from None
        if tokens.refresh_token is not None:
            sealed = self._seal(tokens.refresh_token, context)
            await self._store.io.write(self._store.identity.set_login_idp_refresh, login.id, sealed)
        if refreshed.groups != user.groups:
            await self._audit.record(
                "user.groups_changed",
                actor=user.name,
                before=list(user.groups),
                after=list(refreshed.groups),
            )
        return refreshed

    # ---- machines: workload identity -------------------------------------------------

    async def workload_exchange(self, token: str, *, client: str) -> Issued:
        """A workload token for a machine credential (gateway/identity/workload.py)."""
        try:
            chosen, claims, issuer = await self._workload.verify(token)
            once = single_use_key(chosen, claims, issuer)
        except WorkloadRefused as refused:
            await self._failed("workload", refused.detail, client, issuer=refused.issuer)
            raise IdentityError(401, f"token refused: {refused.shown}") from None
        if once is not None:
            digest, until = once
            if not await self._store.io.write(
                self._store.identity.use_token_once, digest, trust=chosen.name, expires_at=until
            ):
                await self._failed(
                    "workload", f"{chosen.name}: token replayed (jti already used)", client,
                    issuer=issuer, user=chosen.name,
                )  # fmt: skip
                raise IdentityError(401, "token refused: this single-use token was already used")
        try:
            return await self._machine_login(chosen, claims, issuer, client)
        except BaseException:
            if once is not None:
                await self._forget_use(once[0])
            raise

    async def _forget_use(self, key: bytes) -> None:
        """The exchange was refused or failed after the token was remembered: it is not used
        up, so the job may retry it (a store outage must not burn a CI job's only token)."""
        try:
            await self._store.io.write(self._store.identity.forget_token_use, key)
        except StoreError as exc:
            log.warning("could not forget a failed single-use token exchange: %s", exc)

    async def _machine_login(
        self, chosen: WorkloadTrust, claims: dict[str, Any], issuer: str, client: str
    ) -> Issued:
        try:
            user: UserRecord = await self._store.io.write(
                self._store.identity.ensure_machine,
                chosen.name,
                kind="workload",
                groups=tuple(chosen.groups),
            )
        except Conflict as exc:
            await self._failed("workload", str(exc), client, issuer=issuer)
            raise IdentityError(403, f"token refused: {exc}") from None
        if user.disabled:
            await self._failed("workload", "user disabled", client, user=user.name)
            raise IdentityError(403, f"token refused: user {user.name!r} is disabled")
        return await self._issue(
            user,
            method="workload",
            client=client,
            issuer=issuer,
            subject=str(claims.get("sub")),
            ttl=chosen.ttl,
            session_ttl=chosen.ttl,
            refreshable=False,
        )

    # ---- people without an IdP: local users ------------------------------------------

    async def local_login(self, *, user: str, password: str, code: str, client: str) -> Issued:
        if not self.config.local_users:
            raise IdentityError(404, "local users are not enabled on this gateway")
        found = await self._store.io.read(self._store.identity.get_local_credentials, user)
        record: UserRecord | None = await self._store.io.read(self._store.identity.get_user, user)
        # Hash even for unknown users, so timing does not tell which names exist.
        stored = found[0] if found else local.hash_password("not-a-user")
        ok = await asyncio.to_thread(local.verify_password, password, stored) and found is not None
        totp_secret = self._open(found[1], f"user/{user}/totp") if found else None
        if ok and totp_secret is not None:
            ok = local.verify_totp(totp_secret, code)
        elif ok:
            ok = False  # a local user without TOTP cannot sign in
        if not ok or record is None:
            await self._failed("local", "bad user name, password or code", client, user=user)
            raise IdentityError(401, "sign-in refused: bad user name, password or code")
        if record.disabled:
            await self._failed("local", "user disabled", client, user=user)
            raise IdentityError(403, f"user {user!r} is disabled")
        return await self._issue(record, method="local", client=client)

    async def create_local_user(
        self, actor: Identity, *, name: str, password: str, groups: Sequence[str]
    ) -> tuple[UserRecord, str]:
        """Create or reset a local user; returns the TOTP provisioning URI (shown once)."""
        if not self.config.local_users:
            raise IdentityError(404, "local users are not enabled on this gateway")
        if not cl.USER_NAME_RE.match(name):
            raise IdentityError(422, f"{name!r} is not a valid user name")
        if len(password) < local.MIN_PASSWORD_LENGTH:
            raise IdentityError(
                422, f"passwords have at least {local.MIN_PASSWORD_LENGTH} characters"
            )
        assert self._box is not None
        secret = local.new_totp_secret()
        sealed = self._box.seal(secret.encode(), context=f"user/{name}/totp")
        hashed = await asyncio.to_thread(local.hash_password, password)
        try:  # the change and its event: one store transaction
            user: UserRecord = await self._audit.change(
                lambda: self._store.identity.set_local_credentials(
                    name, password_hash=hashed, totp_secret=sealed, groups=tuple(groups)
                ),
                lambda _: [Event("user.local_created", actor.user, {"user": name})],
            )
        except Conflict as exc:
            raise IdentityError(409, str(exc)) from None
        return user, local.provisioning_uri(secret, name)

    # ---- machines: service accounts and API keys -------------------------------------

    async def create_service_account(
        self, actor: Identity, *, name: str, groups: Sequence[str], dpop: bool = False
    ) -> UserRecord:
        if not cl.USER_NAME_RE.match(name):
            raise IdentityError(422, f"{name!r} is not a valid user name")
        try:  # the change and its event: one store transaction
            user: UserRecord = await self._audit.change(
                lambda: self._store.identity.ensure_machine(
                    name, kind="service", groups=tuple(groups), dpop=dpop
                ),
                lambda saved: [
                    Event(
                        "service_account.saved",
                        actor.user,
                        {"user": name, "groups": list(groups), "dpop": saved.dpop},
                    )
                ],
            )
        except Conflict as exc:
            raise IdentityError(409, str(exc)) from None
        return user

    async def create_api_key(
        self, actor: Identity, *, name: str, scopes: Sequence[str], ttl: int | None, label: str
    ) -> tuple[str, TokenRecord]:
        user: UserRecord | None = await self._store.io.read(self._store.identity.get_user, name)
        if user is None or user.kind != "service":
            raise IdentityError(404, f"service account {name!r} does not exist")
        if not scopes:
            raise IdentityError(422, "an API key needs at least one scope (connection pattern)")
        max_ttl = self.config.credentials.api_key_max_ttl
        seconds = min(ttl or max_ttl, max_ttl)
        key = new_token(API_KEY_PREFIX)

        def created(record: TokenRecord) -> list[Event]:
            expires = record.expires_at.isoformat() if record.expires_at else None
            data = {"user": name, "credential": record.id, "scopes": list(scopes)}
            return [Event("api_key.created", actor.user, {**data, "expires_at": expires})]

        record: TokenRecord = await self._audit.change(  # with its event, in one transaction
            lambda: self._store.identity.add_token(
                name,
                hash_token(key),
                expires_at=self._clock() + dt.timedelta(seconds=seconds),
                kind="api_key",
                scopes=tuple(scopes),
                label=label,
            ),
            created,
        )
        return key, record

    # ---- per-connection credentials --------------------------------------------------

    async def connection_credential(
        self, identity: Identity, connection: str
    ) -> tuple[str, dt.datetime]:
        if identity.connection is not None:
            raise IdentityError(403, "a per-connection credential cannot mint credentials")
        requested: dict[str, dt.datetime] = {}
        if self._policy.on_request:  # approvals: grants held through an access request
            requested = await self._store.io.read(
                self._store.reviews.granted_connections, identity.user, self._clock()
            )
        decision = self._policy.decide(
            user=identity.user,
            groups=identity.groups,
            is_admin=identity.is_admin,
            connection=connection,
            scopes=identity.scopes,
            requested=requested,
        )
        if decision.access is None:
            raise IdentityError(403, decision.refusal(identity.user, connection))
        expires = self._clock() + dt.timedelta(seconds=self.config.credentials.connection_ttl)
        if identity.login_id is not None:
            login: LoginRecord | None = await self._store.io.read(
                self._store.identity.get_login, identity.login_id
            )
            if login is not None:
                expires = min(expires, login.expires_at)
        token = new_token(TOKEN_PREFIX)
        record: TokenRecord = await self._store.io.write(
            self._store.identity.add_token,
            identity.user,
            hash_token(token),
            expires_at=expires,
            kind="connection",
            login_id=identity.login_id,
            connection=connection,
            scopes=identity.scopes,
            parent_id=identity.token_id or None,
            label=f"connection:{connection}",
        )
        await self._audit.record(
            "credential.issued",
            actor=identity.user,
            credential=record.id,
            connection=connection,
            access=decision.access,
            login=identity.login_id,
        )
        return token, expires

    # ---- listing and revocation ------------------------------------------------------

    async def list_credentials(self, identity: Identity, user: str | None) -> list[dict[str, Any]]:
        who = user if (user and identity.is_admin) else identity.user
        logins: list[LoginRecord] = await self._store.io.scan(self._store.identity.list_logins, who)
        tokens: list[TokenRecord] = await self._store.io.scan(self._store.identity.list_tokens, who)
        now = self._clock()
        out: list[dict[str, Any]] = [
            {
                "id": lg.id,
                "type": "login",
                "user": lg.user,
                "method": lg.method,
                "created_at": lg.created_at.isoformat(),
                "expires_at": lg.expires_at.isoformat(),
                "last_seen_at": lg.last_seen_at.isoformat(),
                "active": lg.valid_at(now),
                "current": lg.id == identity.login_id,
            }
            for lg in logins
        ]
        out += [
            {
                "id": tk.id,
                "type": tk.kind,
                "user": tk.user,
                "label": tk.label,
                "created_at": tk.created_at.isoformat(),
                "expires_at": tk.expires_at.isoformat() if tk.expires_at else None,
                "scopes": list(tk.scopes) if tk.scopes is not None else None,
                "active": tk.valid_at(now),
                "current": tk.id == identity.token_id,
            }
            for tk in tokens
            if tk.login_id is None and tk.kind in ("api_key", "bearer")
        ]
        return out

    async def revoke(self, actor: Identity, credential_id: str) -> dict[str, Any]:
        """Revoke a sign-in (and all its tokens) or a single token; ends its sessions."""
        if actor.connection is not None:
            raise IdentityError(403, "a per-connection credential cannot revoke credentials")
        login: LoginRecord | None = await self._store.io.read(
            self._store.identity.get_login, credential_id
        )
        if login is not None:
            if login.user != actor.user and not actor.is_admin:
                raise IdentityError(404, f"credential {credential_id!r} does not exist")
            await self._store.io.write(self._store.identity.revoke_login, login.id)
            ended = await self._end_sessions("credential revoked", login_id=login.id)
            await self._audit.record_taken(
                "credential.revoked", actor=actor.user, user=login.user, login=login.id,
                sessions_ended=ended,
            )  # fmt: skip
            return {"id": login.id, "type": "login", "revoked": True, "sessions_ended": ended}
        token: TokenRecord | None = await self._store.io.read(
            self._store.identity.get_token, credential_id
        )
        if token is None or (token.user != actor.user and not actor.is_admin):
            raise IdentityError(404, f"credential {credential_id!r} does not exist")
        await self._store.io.write(self._store.identity.revoke_token, token.id)
        family: list[TokenRecord] = await self._store.io.scan(
            self._store.identity.list_tokens, token.user
        )
        ids = frozenset({token.id} | {t.id for t in family if t.parent_id == token.id})
        ended = await self._end_sessions("credential revoked", token_ids=ids)
        await self._audit.record_taken(
            "credential.revoked", actor=actor.user, user=token.user, credential=token.id,
            sessions_ended=ended,
        )  # fmt: skip
        return {"id": token.id, "type": token.kind, "revoked": True, "sessions_ended": ended}

    async def logout(self, identity: Identity) -> dict[str, Any]:
        """End the caller's sign-in; a plain bearer token or API key is left alone."""
        if identity.login_id is None:
            return {"revoked": False}
        await self._store.io.write(self._store.identity.revoke_login, identity.login_id)
        ended = await self._end_sessions("signed out", login_id=identity.login_id)
        await self._audit.record_taken(
            "auth.logout", actor=identity.user, login=identity.login_id, sessions_ended=ended
        )
        return {"revoked": True, "login_id": identity.login_id, "sessions_ended": ended}

    async def set_disabled(self, actor: Identity, name: str, disabled: bool) -> UserRecord:
        if disabled and name == actor.user:
            raise IdentityError(409, "you cannot disable yourself")
        try:
            if not disabled:  # access given back: with its event, in one transaction
                enabled: UserRecord = await self._audit.change(
                    lambda: self._store.identity.set_user_disabled(name, False),
                    lambda _: [
                        Event("user.enabled", actor.user, {"user": name, "sessions_ended": 0})
                    ],
                )
                return enabled
            user: UserRecord = await self._store.io.write(
                self._store.identity.set_user_disabled, name, True
            )
        except NotFound:
            raise IdentityError(404, f"user {name!r} does not exist") from None
        # Access taken away stands whatever the audit log says (fail closed); its event is
        # kept for later when the log cannot take it now.
        ended = await self._end_sessions("user disabled", user=name)
        await self._audit.record_taken(
            "user.disabled", actor=actor.user, user=name, sessions_ended=ended
        )
        return user

    def grants(
        self, identity: Identity, requested: Mapping[str, dt.datetime] | None = None
    ) -> list[dict[str, Any]]:
        """For `whoami`. A grant with `request:` terms says so (`on_request`), with the
        approved access requests (`requested`: connection -> end) it holds through now."""
        if identity.is_admin:
            return [{"connection": "*", "access": "admin", "on_request": False}]
        grants = self._policy.grants_of(identity.user, identity.groups)
        scoped = ""
        if identity.scopes is not None:
            scoped = " (scopes: {})".format(
                ", ".join(s for s in identity.scopes if s != ADMIN_SCOPE)
            )
        out: list[dict[str, Any]] = []
        for g in grants:
            entry: dict[str, Any] = {
                "connection": f"{g.connection}{scoped}",
                "access": g.access,
                "on_request": g.request is not None,
            }
            if g.request is not None:
                entry["approved"] = [
                    {"connection": c, "until": end.isoformat()}
                    for c, end in sorted((requested or {}).items())
                    if g.matches(c)
                ]
            out.append(entry)
        return out
