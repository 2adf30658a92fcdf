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

DPoP (RFC 9449, gateway/identity/dpop.py): the API keys of a service account that requires
it are refused unless presented as ``Authorization: DPoP <key>`` with a fresh proof; the key
is bound at its first use to the proof's key (``tokens.jkt``), and every later proof must be
signed by that key. Each proof's ``jti`` is remembered in the store (``token_replay``) for
twice the ``iat`` window, so a proof is good once across every gateway member. Doors that
cannot carry a proof (PostgreSQL and SSH passwords, the agent stream) refuse such keys.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from gateway.crypto import hash_token
from gateway.identity.dpop import DEFAULT_WINDOW, DpopError, check_proof, replay_digest
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


class DpopRefused(AuthError):
    """A DPoP-bound credential without a valid proof by its key (401 ``invalid_dpop_proof``)."""


@dataclass(frozen=True, slots=True)
class DpopRequest:
    """What a proof is checked against: the ``DPoP`` header and the request it came with."""

    proof: str | None
    method: str
    url: str


class Authenticator:
    def __init__(
        self,
        store: Store,
        policy: AccessPolicy | None = None,
        *,
        touch_interval: float = TOUCH_INTERVAL,
        dpop_window: float = DEFAULT_WINDOW,
    ) -> None:
        self._store = store
        self._policy = policy or AccessPolicy()
        self._touch_interval = touch_interval
        self._dpop_window = dpop_window

    async def _check_dpop(
        self, token: str, record_id: str, bound: str | None, dpop: DpopRequest | None, bind: bool
    ) -> None:
        """Refuse unless ``dpop`` carries a fresh, unused proof by the key the credential is
        bound to (with ``bind``, binding it to the proof's key at its first use). A credential
        that need not be bound may still be sent with proofs; they are checked, not bound."""
        if dpop is None:
            raise DpopRefused("this credential is DPoP-bound: send it as 'Authorization: DPoP'")
        try:
            proof = check_proof(
                dpop.proof,
                method=dpop.method,
                url=dpop.url,
                access_token=token,
                window=self._dpop_window,
            )
        except DpopError as exc:
            raise DpopRefused(str(exc)) from None
        if bound is None and bind:
            bound = await self._store.io.write(
                self._store.identity.bind_token_key, record_id, proof.jkt
            )
        if bound is not None and bound != proof.jkt:
            raise DpopRefused("the proof is signed by another key than the credential's")
        expires = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=2 * self._dpop_window)
        fresh = await self._store.io.write(
            self._store.identity.use_token_once,
            replay_digest(proof),
            trust="dpop",
            expires_at=expires,
        )
        if not fresh:
            raise DpopRefused("the proof was used before (jti replayed)")

    async def authenticate(self, token: str | None, *, dpop: DpopRequest | None = None) -> Identity:
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
        required = user.dpop and record.kind == "api_key"
        if required or dpop is not None:
            await self._check_dpop(token, record.id, record.jkt, dpop, bind=required)
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

    async def authenticate_header(
        self, header: str | None, *, dpop: DpopRequest | None = None
    ) -> Identity:
        """The caller named by an ``Authorization`` header: ``Bearer <credential>``, or
        ``DPoP <credential>`` with ``dpop`` (the proof and its request) where the door can
        carry one."""
        scheme, _, token = (header or "").partition(" ")
        if scheme.lower() == "dpop" and dpop is not None:
            return await self.authenticate(token.strip(), dpop=dpop)
        if scheme.lower() != "bearer":
            raise AuthError("expected an Authorization: Bearer credential")
        return await self.authenticate(token.strip())
