"""OpenID Connect relying party: discovery, JWKS with rotation, token validation, flows.

authlib builds and parses the OAuth 2.0 messages (authorization URL, token requests, PKCE,
provider metadata); joserfc verifies signatures; httpx does the HTTP. The rules a token
must pass (`JwtValidator.validate`), all of them, in this order:

1. At most 16 KiB, three base64url parts, a JSON header without `crit`.
2. `alg` in the configured allow-list, which only holds asymmetric algorithms: `none` and
   the HMAC family are refused before any key is looked at, so an HS256 token "signed" with
   the provider's public key never reaches a verifier.
3. The signing key is the issuer's JWKS key with the token's `kid` that fits `alg`
   (`gateway.identity.keys`: weak, misused or private keys in the JWKS are refused when it
   is read, and logged once each). An unknown `kid` makes the cache re-read the JWKS once
   (the provider may have rotated its keys), at most every `jwks_min_refresh` seconds, so a
   stream of bogus `kid`s cannot hammer the provider.
4. The signature verifies with that key and that algorithm.
5. `iss` equals the configured issuer exactly; `aud` contains the expected audience (and
   when there are several, `azp` names it); `exp` is required and in the future, `nbf` and
   `iat` not in the future, each with `leeway` seconds of clock skew; the three are numbers
   between 1970 and 9999 (not `NaN`, `Infinity`, a string or a boolean); `sub` is a string
   of 1 to 255 characters; `nonce` matches when the flow sent one.

Everything raises `TokenRejected` with a reason that names the failed rule and never
contains the token.

Discovery needs `issuer` and `jwks_uri` to verify tokens (what CI providers publish, e.g.
GitHub Actions); a people's sign-in provider also needs its authorization and token
endpoints (`Discovery(..., sign_in=True)`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
from authlib.oauth2.rfc6749.parameters import prepare_grant_uri, prepare_token_request
from authlib.oauth2.rfc8628 import DEVICE_CODE_GRANT_TYPE
from authlib.oidc.discovery import OpenIDProviderMetadata
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import JWKRegistry, Key

from gateway.identity import keys as jwk_rules

log = logging.getLogger(__name__)

MAX_TOKEN_SIZE = 16 * 1024
HTTP_TIMEOUT = 10.0
MAX_JWKS_KEYS = 100  # keys of one JWKS considered; a real provider publishes a handful
# NumericDate claims (exp, nbf, iat) lie between 1970 and the last second datetime knows.
MAX_NUMERIC_DATE = 253402300799
MAX_SUBJECT = 255  # characters of `sub`, as the store keeps it


class TokenRejected(Exception):
    """A presented token failed validation; `reason` is safe to log and to show."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ProviderError(Exception):
    """The provider could not be reached or answered something unusable."""


class FlowPending(Exception):
    """Device flow: the user has not finished yet (`slow_down` asks to poll less often)."""

    def __init__(self, slow_down: bool = False) -> None:
        super().__init__("authorization pending")
        self.slow_down = slow_down


@dataclass(frozen=True, slots=True)
class ProviderMetadata:
    issuer: str
    jwks_uri: str
    authorization_endpoint: str | None = None  # None: a token issuer only (CI providers)
    token_endpoint: str | None = None
    userinfo_endpoint: str | None = None
    device_authorization_endpoint: str | None = None
    signing_algorithms: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class TokenResponse:
    """What a token endpoint answered; `__repr__` hides the tokens."""

    access_token: str = field(repr=False)
    id_token: str | None = field(default=None, repr=False)
    refresh_token: str | None = field(default=None, repr=False)
    expires_in: int | None = None


def http_client(ca_file: Path | None = None) -> httpx.AsyncClient:
    """An HTTP client for talking to providers: verified TLS, bounded time, no redirects."""
    verify: Any = str(ca_file) if ca_file else True
    return httpx.AsyncClient(timeout=HTTP_TIMEOUT, verify=verify, follow_redirects=False)


def _b64json(part: str) -> dict[str, Any]:
    try:
        raw = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
        value = json.loads(raw)
    except (binascii.Error, ValueError, RecursionError) as exc:
        # RecursionError: JSON nested a few thousand levels deep, which fits in 16 KiB.
        raise TokenRejected("malformed token") from exc
    if not isinstance(value, dict):
        raise TokenRejected("malformed token")
    return value


def unverified_header_and_claims(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The token's header and claims WITHOUT verification: only for routing (which issuer?)."""
    if len(token) > MAX_TOKEN_SIZE:
        raise TokenRejected("token too large")
    parts = token.split(".")
    if len(parts) != 3:
        raise TokenRejected("malformed token (not a compact JWS)")
    return _b64json(parts[0]), _b64json(parts[1])


class Discovery:
    """The provider's metadata from `/.well-known/openid-configuration`, fetched once.

    `sign_in`: people sign in there, so the authorization and token endpoints are required;
    otherwise (workload issuers) `issuer` and `jwks_uri` are all that verifying needs.
    """

    def __init__(self, issuer: str, http: httpx.AsyncClient, *, sign_in: bool = False) -> None:
        self.issuer = issuer.rstrip("/")
        self._http = http
        self._sign_in = sign_in
        self._metadata: ProviderMetadata | None = None
        self._lock = asyncio.Lock()

    async def metadata(self) -> ProviderMetadata:
        if self._metadata is not None:
            return self._metadata
        async with self._lock:
            if self._metadata is None:
                self._metadata = await self._discover()
        return self._metadata

    async def _discover(self) -> ProviderMetadata:
        url = f"{self.issuer}/.well-known/openid-configuration"
        try:
            response = await self._http.get(url)
            response.raise_for_status()
            doc = response.json()
        except (httpx.HTTPError, ValueError, RecursionError) as exc:
            raise ProviderError(f"discovery at {url} failed: {exc}") from exc
        if not isinstance(doc, dict):
            raise ProviderError(f"discovery at {url}: not a JSON object")
        if doc.get("issuer") != self.issuer:
            # OIDC Discovery 4.3: the document must name exactly the issuer we asked.
            raise ProviderError(
                f"discovery at {url} names issuer {doc.get('issuer')!r}, not {self.issuer!r}"
            )
        metadata = OpenIDProviderMetadata(doc)
        required = ["jwks_uri"]
        if self._sign_in:
            required += ["authorization_endpoint", "token_endpoint"]
        for key in required:
            if not isinstance(metadata.get(key), str):
                raise ProviderError(f"discovery at {url}: {key} missing")
        try:
            metadata.validate_jwks_uri()
            if self._sign_in:
                metadata.validate_token_endpoint()
        except ValueError as exc:
            raise ProviderError(f"discovery at {url}: {exc}") from exc
        optional = {
            k: metadata.get(k) if isinstance(metadata.get(k), str) else None
            for k in ("authorization_endpoint", "token_endpoint")
        }
        return ProviderMetadata(
            issuer=self.issuer,
            jwks_uri=metadata["jwks_uri"],
            **optional,
            userinfo_endpoint=metadata.get("userinfo_endpoint"),
            device_authorization_endpoint=metadata.get("device_authorization_endpoint"),
            signing_algorithms=tuple(metadata.get("id_token_signing_alg_values_supported") or ()),
        )


@dataclass(frozen=True, slots=True)
class PublishedKey:
    """A usable key of an issuer's JWKS: its public members as published, and the key."""

    kid: str | None
    jwk: dict[str, Any]
    key: Key


class JwksCache:
    """The issuer's signing keys, re-read on an unknown `kid` (rate-limited) and when old.

    Keys unfit to verify (`gateway.identity.keys.unfit`) are left out, each logged once with
    the reason; a token naming one is refused with that reason.
    """

    def __init__(
        self,
        discovery: Discovery,
        http: httpx.AsyncClient,
        *,
        min_refresh: float = 30.0,
        max_age: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._discovery = discovery
        self._http = http
        self._min_refresh = min_refresh
        self._max_age = max_age
        self._clock = clock
        self._keys: list[PublishedKey] | None = None
        self._refused: dict[str, str] = {}  # kid -> why, for the token's refusal
        self._reported: set[str] = set()  # digests of refused keys already logged
        self._fetched_at = float("-inf")
        self._lock = asyncio.Lock()
        self.fetches = 0  # for tests and metrics

    async def key(self, kid: str | None, alg: str) -> Key:
        now = self._clock()
        if self._keys is None or now - self._fetched_at > self._max_age:
            await self._refresh(force=True)
        found = self._find(kid, alg)
        if found is None and self._clock() - self._fetched_at >= self._min_refresh:
            await self._refresh(force=False)
            found = self._find(kid, alg)
        if found is not None:
            return found
        if kid is not None and kid in self._refused:
            raise TokenRejected(f"signing key {kid!r} is refused: {self._refused[kid]}")
        if kid is not None and any(k.kid == kid for k in self._keys or ()):
            raise TokenRejected(f"signing key {kid!r} does not fit algorithm {alg}")
        raise TokenRejected(f"unknown signing key (kid {kid!r}) for this issuer")

    def _find(self, kid: str | None, alg: str) -> Key | None:
        if self._keys is None:
            return None
        if kid is None:
            # A token without kid is accepted only when the issuer has a single key.
            only = self._keys[0] if len(self._keys) == 1 else None
            return only.key if only is not None and jwk_rules.fits(only.jwk, alg) else None
        for published in self._keys:
            if published.kid == kid and jwk_rules.fits(published.jwk, alg):
                return published.key
        return None

    async def _refresh(self, *, force: bool) -> None:
        stamp = self._fetched_at
        async with self._lock:
            if self._fetched_at != stamp and not force:
                return  # another task refreshed while we waited
            metadata = await self._discovery.metadata()
            try:
                response = await self._http.get(metadata.jwks_uri)
                response.raise_for_status()
                doc = response.json()
            except (httpx.HTTPError, ValueError, RecursionError) as exc:
                raise ProviderError(f"cannot read the JWKS at {metadata.jwks_uri}: {exc}") from exc
            listed = doc.get("keys") if isinstance(doc, dict) else None
            if not isinstance(listed, list):
                raise ProviderError(f"cannot read the JWKS at {metadata.jwks_uri}: no keys list")
            usable, refused = self._sort(listed[:MAX_JWKS_KEYS])
            self._keys = usable
            self._refused = refused
            self._fetched_at = self._clock()
            self.fetches += 1
            log.info(
                "JWKS of %s: %d usable keys, %d refused",
                self._discovery.issuer, len(usable), len(listed) - len(usable),
            )  # fmt: skip

    def _sort(self, listed: list[Any]) -> tuple[list[PublishedKey], dict[str, str]]:
        usable: list[PublishedKey] = []
        refused: dict[str, str] = {}
        for jwk in listed:
            if not isinstance(jwk, dict):
                continue
            why = jwk_rules.unfit(jwk)
            if why is None:
                try:
                    key = JWKRegistry.import_key(jwk)
                except Exception as exc:  # whatever joserfc makes of it, the key is out
                    why = f"it cannot be read ({type(exc).__name__})"
                else:
                    kid = jwk.get("kid")
                    usable.append(PublishedKey(kid if isinstance(kid, str) else None, jwk, key))
                    continue
            kid = jwk.get("kid")
            if isinstance(kid, str):
                refused.setdefault(kid, why)
            self._report(jwk, why)
        return usable, refused

    def _report(self, jwk: dict[str, Any], why: str) -> None:
        """Log a refused key once (per key, not per fetch), without its private members."""
        digest = hashlib.sha256(json.dumps(jwk, sort_keys=True, default=str).encode()).hexdigest()
        if digest in self._reported:
            return
        if len(self._reported) >= 4 * MAX_JWKS_KEYS:
            self._reported.clear()  # bounded, whatever a provider keeps publishing
        self._reported.add(digest)
        kid = jwk.get("kid")
        log.warning(
            "JWKS of %s: key %s refused: %s",
            self._discovery.issuer, repr(kid)[:80] if kid is not None else "without kid", why,
        )  # fmt: skip


class JwtValidator:
    """Validates JWTs of one issuer for one audience (see the module docstring)."""

    def __init__(
        self,
        discovery: Discovery,
        keys: JwksCache,
        *,
        audience: str,
        algorithms: Sequence[str],
        leeway: int = 30,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.issuer = discovery.issuer
        self._keys = keys
        self.audience = audience
        self.algorithms = frozenset(algorithms)
        self.leeway = leeway
        self._clock = clock

    async def validate(self, token: str, *, nonce: str | None = None) -> dict[str, Any]:
        header, _ = unverified_header_and_claims(token)
        alg = header.get("alg")
        if not isinstance(alg, str) or alg.lower() == "none":
            raise TokenRejected("unsigned token (alg none) refused")
        if alg.upper().startswith("HS"):
            raise TokenRejected(f"symmetric algorithm {alg} refused")
        if alg not in self.algorithms:
            raise TokenRejected(f"algorithm {alg} is not allowed")
        if "crit" in header:
            raise TokenRejected("critical header extensions are not supported")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise TokenRejected("malformed kid")
        key = await self._keys.key(kid, alg)
        try:
            decoded = jwt.decode(token, key, algorithms=[alg])
        except JoseError as exc:
            raise TokenRejected(f"bad signature ({exc.error})") from None
        except ValueError:
            raise TokenRejected("malformed token") from None
        claims = dict(decoded.claims)
        self._check_claims(claims, nonce)
        return claims

    def _check_claims(self, claims: dict[str, Any], nonce: str | None) -> None:
        now = self._clock()
        if claims.get("iss") != self.issuer:
            raise TokenRejected(f"wrong issuer {str(claims.get('iss'))[:200]!r}")
        aud = claims.get("aud")
        audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        if self.audience not in audiences:
            raise TokenRejected(f"wrong audience {str(aud)[:200]!r}")
        if len(audiences) > 1 and claims.get("azp") != self.audience:
            # OIDC Core 3.1.3.7: with several audiences, azp must name this one; else the
            # token was issued to another of them, which could replay it here.
            raise TokenRejected("several audiences and the authorized party (azp) is not this one")
        exp = numeric_date(claims, "exp")
        if exp is None:
            raise TokenRejected("no expiry (exp) in token")
        if now > exp + self.leeway:
            raise TokenRejected("token expired")
        nbf = numeric_date(claims, "nbf")
        if nbf is not None and now + self.leeway < nbf:
            raise TokenRejected("token not yet valid (nbf)")
        iat = numeric_date(claims, "iat")
        if iat is not None and now + self.leeway < iat:
            raise TokenRejected("token issued in the future (iat)")
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise TokenRejected("no subject (sub) in token")
        if len(sub) > MAX_SUBJECT:
            raise TokenRejected(f"subject (sub) longer than {MAX_SUBJECT} characters")
        if nonce is not None and claims.get("nonce") != nonce:
            raise TokenRejected("nonce does not match this sign-in")


def numeric_date(claims: dict[str, Any], name: str) -> float | None:
    """The NumericDate claim `name` (RFC 7519 2), None when absent; anything but a number
    between 1970 and 9999 is refused: `NaN` and `Infinity` (which Python's JSON reader
    accepts) compare false with every time, so an `exp` of `NaN` would never expire."""
    if name not in claims:
        return None
    value = claims[name]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TokenRejected(f"malformed {name} (not a number)")
    if not 0 <= value <= MAX_NUMERIC_DATE or not math.isfinite(value):
        raise TokenRejected(f"malformed {name} (not a date between 1970 and 9999)")
    return float(value)


def issuer_keys(
    issuer: str,
    http: httpx.AsyncClient,
    *,
    jwks_min_refresh: float = 30.0,
    jwks_max_age: float = 3600.0,
) -> tuple[Discovery, JwksCache]:
    """Discovery and JWKS of a token issuer, to share between the validators of its audiences
    and settings (one JWKS fetch serves them all)."""
    discovery = Discovery(issuer, http)
    return discovery, JwksCache(discovery, http, min_refresh=jwks_min_refresh, max_age=jwks_max_age)


class OidcClient:
    """The gateway as a confidential client of the people's IdP."""

    def __init__(
        self,
        *,
        issuer: str,
        client_id: str,
        client_secret: str | None,
        scopes: Sequence[str],
        algorithms: Sequence[str],
        leeway: int,
        http: httpx.AsyncClient,
        jwks_min_refresh: float = 30.0,
        jwks_max_age: float = 3600.0,
    ) -> None:
        self.client_id = client_id
        self._secret = client_secret
        self.scopes = list(scopes)
        self._http = http
        self.discovery = Discovery(issuer, http, sign_in=True)
        self.keys = JwksCache(
            self.discovery, http, min_refresh=jwks_min_refresh, max_age=jwks_max_age
        )
        self.validator = JwtValidator(
            self.discovery, self.keys, audience=client_id, algorithms=algorithms, leeway=leeway
        )

    @property
    def issuer(self) -> str:
        return self.discovery.issuer

    def _auth_headers(self) -> dict[str, str]:
        if self._secret is None:
            return {}
        # RFC 6749 2.3.1: both parts form-urlencoded before the Basic encoding.
        pair = f"{quote(self.client_id, safe='')}:{quote(self._secret, safe='')}"
        return {"Authorization": "Basic " + base64.b64encode(pair.encode()).decode()}

    def _body(self, body: str) -> str:
        # A public client (no secret) identifies itself in the body.
        return body if self._secret is not None else f"{body}&client_id={quote(self.client_id)}"

    async def authorization_url(
        self, *, redirect_uri: str, state: str, nonce: str, code_challenge: str
    ) -> str:
        metadata = await self.discovery.metadata()
        if metadata.authorization_endpoint is None:  # Discovery(sign_in=True) requires it
            raise ProviderError("the provider has no authorization endpoint")
        url: str = prepare_grant_uri(
            metadata.authorization_endpoint,
            self.client_id,
            "code",
            redirect_uri=redirect_uri,
            scope=" ".join(self.scopes),
            state=state,
            nonce=nonce,
            code_challenge=code_challenge,
            code_challenge_method="S256",
        )
        return url

    async def _token_request(self, body: str) -> TokenResponse:
        metadata = await self.discovery.metadata()
        if metadata.token_endpoint is None:  # Discovery(sign_in=True) requires it
            raise ProviderError("the provider has no token endpoint")
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "Accept": "application/json",
            **self._auth_headers(),
        }
        try:
            response = await self._http.post(
                metadata.token_endpoint, content=self._body(body), headers=headers
            )
            data = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise ProviderError(f"token endpoint: {exc}") from exc
        if not isinstance(data, dict):
            raise ProviderError("token endpoint: not a JSON object")
        if response.status_code != 200 or "error" in data:
            error = str(data.get("error", response.status_code))
            if error == "authorization_pending":
                raise FlowPending()
            if error == "slow_down":
                raise FlowPending(slow_down=True)
            raise TokenRejected(f"the provider refused: {error}")
        access = data.get("access_token")
        if not isinstance(access, str):
            raise ProviderError("token endpoint: no access_token")
        expires_in = data.get("expires_in")
        return TokenResponse(
            access_token=access,
            id_token=data.get("id_token") if isinstance(data.get("id_token"), str) else None,
            refresh_token=(
                data.get("refresh_token") if isinstance(data.get("refresh_token"), str) else None
            ),
            expires_in=int(expires_in) if isinstance(expires_in, int | float) else None,
        )

    async def exchange_code(
        self, *, code: str, redirect_uri: str, code_verifier: str
    ) -> TokenResponse:
        body = prepare_token_request(
            "authorization_code", code=code, redirect_uri=redirect_uri, code_verifier=code_verifier
        )
        return await self._token_request(body)

    async def refresh(self, refresh_token: str) -> TokenResponse:
        body = prepare_token_request("refresh_token", refresh_token=refresh_token)
        return await self._token_request(body)

    async def userinfo(self, access_token: str) -> dict[str, Any]:
        metadata = await self.discovery.metadata()
        if metadata.userinfo_endpoint is None:
            raise ProviderError("the provider has no userinfo endpoint")
        try:
            response = await self._http.get(
                metadata.userinfo_endpoint, headers={"Authorization": f"Bearer {access_token}"}
            )
        except httpx.HTTPError as exc:
            raise ProviderError(f"userinfo: {exc}") from exc
        if response.status_code in (401, 403):
            raise TokenRejected("the provider refused the access token at userinfo")
        try:
            response.raise_for_status()
            data = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise ProviderError(f"userinfo: {exc}") from exc
        if not isinstance(data, dict):
            raise ProviderError("userinfo: not a JSON object")
        return data

    async def device_authorization(self) -> dict[str, Any]:
        metadata = await self.discovery.metadata()
        if metadata.device_authorization_endpoint is None:
            raise ProviderError(
                "the identity provider does not support the device authorization flow"
            )
        body = self._body(f"scope={quote(' '.join(self.scopes))}")
        if self._secret is not None:
            body = f"{body}&client_id={quote(self.client_id)}"
        try:
            response = await self._http.post(
                metadata.device_authorization_endpoint,
                content=body,
                headers={
                    "Content-Type": "application/x-www-form-urlencoded",
                    **self._auth_headers(),
                },
            )
            response.raise_for_status()
            data = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise ProviderError(f"device authorization: {exc}") from exc
        if not isinstance(data, dict) or not isinstance(data.get("device_code"), str):
            raise ProviderError("device authorization: unusable answer")
        return data

    async def poll_device(self, device_code: str) -> TokenResponse:
        body = prepare_token_request(DEVICE_CODE_GRANT_TYPE, device_code=device_code)
        return await self._token_request(body)
