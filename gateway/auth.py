"""Who is calling: gateway credentials for people and machines.

Every credential is random (a prefix + 256 bits); only its SHA-256 is stored, so a hash
lookup is the comparison and no credential is ever kept. The prefixes tell kinds apart for
people and secret scanners:

    wgt_  access credentials: sign-in access tokens (short-lived, refreshable), per-connection
          credentials (`wardgate creds`/`psql`, minutes), and plain bearer tokens (the
          bootstrap admin token, `wardgate login --token`)
    wgk_  service-account API keys (scoped, expiring)
    wgr_  refresh tokens: accepted only by the refresh endpoint, never as a credential

A credential authenticates when it is not revoked or expired, its sign-in (if any) is not
revoked, expired or idle for longer than its idle timeout, and its user is not disabled.
Agent keys are a different kind of secret in a different table: an agent key never
authorises a client, and a client credential never opens an agent stream.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from gateway.crypto import hash_token
from gateway.policy.grants import ADMIN_SCOPE, AccessPolicy
from gateway.store import Store

TOKEN_PREFIX = "wgt_"  # noqa: S105 - a prefix, not a secret
API_KEY_PREFIX = "wgk_"
REFRESH_PREFIX = "wgr_"
CREDENTIAL_PREFIXES = (TOKEN_PREFIX, API_KEY_PREFIX)
_CREDENTIAL_KINDS = frozenset({"bearer", "access", "connection", "api_key"})
TOUCH_INTERVAL = 30.0  # seconds: how stale a sign-in's idle clock may get


@dataclass(frozen=True, slots=True)
class Identity:
    user: str
    is_admin: bool = False
    groups: tuple[str, ...] = ()
    token_id: str = ""
    kind: str = "person"  # person | service | workload
    login_id: str | None = None  # the sign-in the credential belongs to
    connection: str | None = None  # a per-connection credential reaches only this one
    scopes: tuple[str, ...] | None = None  # an API key's scopes
    credential: str = "bearer"  # the credential's kind

    @property
    def is_machine(self) -> bool:
        return self.kind != "person"


class AuthError(Exception):
    """Credentials missing, malformed, unknown, expired or revoked."""


class Authenticator:
    def __init__(
        self,
        store: Store,
        policy: AccessPolicy | None = None,
        *,
        touch_interval: float = TOUCH_INTERVAL,
    ) -> None:
        self._store = store
        self._policy = policy or AccessPolicy()
        self._touch_interval = touch_interval

    async def authenticate(self, token: str | None) -> Identity:
        if not token or not token.startswith(CREDENTIAL_PREFIXES) or len(token) > 256:
            raise AuthError("missing or malformed credential")
        found = await self._store.io.read(self._store.identity.find_credential, hash_token(token))
        if found is None:
            raise AuthError("credential not recognised")
        record, user, login = found
        now = dt.datetime.now(dt.UTC)
        if record.kind not in _CREDENTIAL_KINDS:
            raise AuthError("credential not recognised")
        if not record.valid_at(now):
            raise AuthError("credential expired or revoked")
        if login is not None and not login.valid_at(now):
            raise AuthError(f"credential expired or revoked ({login.why_invalid(now)})")
        if user.disabled:
            raise AuthError("credential expired or revoked (user disabled)")
        if login is not None:
            await self._store.io.write(
                self._store.identity.touch_login, login.id, min_interval=self._touch_interval
            )
        is_admin = user.is_admin or self._policy.is_admin(user.name, user.groups)
        if record.scopes is not None and ADMIN_SCOPE not in record.scopes:
            is_admin = False
        return Identity(
            user=user.name,
            is_admin=is_admin,
            groups=user.groups,
            token_id=record.id,
            kind=user.kind,
            login_id=record.login_id,
            connection=record.connection,
            scopes=record.scopes,
            credential=record.kind,
        )

    async def authenticate_header(self, header: str | None) -> Identity:
        scheme, _, token = (header or "").partition(" ")
        if scheme.lower() != "bearer":
            raise AuthError("expected an Authorization: Bearer credential")
        return await self.authenticate(token.strip())
