"""The relying party's validator against a real OpenID provider (another process).

Discovery and the JWKS come from the running provider; tokens are signed by it (its
test-only `/test/sign`), or forged here.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey

from gateway.identity.oidc import (
    Discovery,
    JwksCache,
    JwtValidator,
    ProviderError,
    TokenRejected,
)
from tests.fixtures.oidc import OidcProvider, start_provider

CLIENT = "wardgate"


@pytest.fixture(scope="module")
def oidc_provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OidcProvider]:
    """One provider for the module (a test may rotate its key; the others sign anew)."""
    provider = start_provider(tmp_path_factory.mktemp("oidc"))
    try:
        yield provider
    finally:
        provider.proc.stop()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as client:
        yield client


def validator(
    idp: OidcProvider, http: httpx.AsyncClient, *, min_refresh: float = 60.0
) -> tuple[JwtValidator, JwksCache]:
    discovery = Discovery(idp.issuer, http)
    keys = JwksCache(discovery, http, min_refresh=min_refresh)
    return JwtValidator(discovery, keys, audience=CLIENT, algorithms=["RS256"], leeway=5), keys


def claims(idp: OidcProvider, **changes: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {"iss": idp.issuer, "sub": "u-1", "aud": CLIENT, "iat": now, "exp": now + 300}
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


async def test_a_token_of_the_provider_validates(
    oidc_provider: OidcProvider, http: httpx.AsyncClient
) -> None:
    check, _ = validator(oidc_provider, http)
    got = await check.validate(oidc_provider.sign(claims(oidc_provider, nonce="n-1")), nonce="n-1")
    assert got["sub"] == "u-1"


class In:
    """A time claim `seconds` from when the test runs (not from collection)."""

    def __init__(self, seconds: int) -> None:
        self.seconds = seconds


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"aud": "another-client"}, "wrong audience"),
        ({"aud": [CLIENT, "other"], "azp": "other"}, "azp"),
        ({"iss": "http://127.0.0.1:1"}, "wrong issuer"),
        ({"exp": In(-60)}, "expired"),
        ({"exp": None}, "no expiry"),
        ({"nbf": In(120)}, "not yet valid"),
        ({"iat": In(120)}, "issued in the future"),
        ({"sub": None}, "no subject"),
        ({"nonce": "someone-elses"}, "nonce"),
    ],
)
async def test_claims_rules(
    oidc_provider: OidcProvider,
    http: httpx.AsyncClient,
    changes: dict[str, Any],
    reason: str,
) -> None:
    check, _ = validator(oidc_provider, http)
    now = int(time.time())
    resolved = {k: now + v.seconds if isinstance(v, In) else v for k, v in changes.items()}
    with pytest.raises(TokenRejected, match=reason):
        await check.validate(oidc_provider.sign(claims(oidc_provider, **resolved)), nonce="mine")


async def test_leeway_tolerates_small_clock_skew(
    oidc_provider: OidcProvider, http: httpx.AsyncClient
) -> None:
    check, _ = validator(oidc_provider, http)
    skewed = claims(oidc_provider, exp=int(time.time()) - 2, nbf=int(time.time()) + 2)
    await check.validate(oidc_provider.sign(skewed))


async def test_an_unknown_kid_refreshes_the_jwks_once_and_is_rate_limited(
    oidc_provider: OidcProvider, http: httpx.AsyncClient
) -> None:
    check, keys = validator(oidc_provider, http, min_refresh=0)
    await check.validate(oidc_provider.sign(claims(oidc_provider)))
    assert keys.fetches == 1
    oidc_provider.rotate_key()  # the provider signs with a new key from now on
    await check.validate(oidc_provider.sign(claims(oidc_provider)))
    assert keys.fetches == 2  # one refresh found the new key

    limited, limited_keys = validator(oidc_provider, http, min_refresh=3600)
    await limited.validate(oidc_provider.sign(claims(oidc_provider)))
    rogue = RSAKey.generate_key(2048, parameters={"kid": "rogue"})
    for _ in range(5):
        forged = jwt.encode({"alg": "RS256", "kid": "rogue"}, claims(oidc_provider), rogue)
        with pytest.raises(TokenRejected, match="unknown signing key"):
            await limited.validate(forged)
    assert limited_keys.fetches == 1  # bogus kids do not hammer the provider


async def test_algorithm_attacks(oidc_provider: OidcProvider, http: httpx.AsyncClient) -> None:
    import base64
    import hashlib
    import hmac
    import json

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    check, keys = validator(oidc_provider, http)
    body = b64(json.dumps(claims(oidc_provider)).encode())
    unsigned = b64(json.dumps({"alg": "none"}).encode()) + "." + body + "."
    with pytest.raises(TokenRejected, match="alg none"):
        await check.validate(unsigned)
    public = RSAKey.import_key(oidc_provider.jwks()["keys"][0])
    head = b64(json.dumps({"alg": "HS256", "kid": public.kid}).encode())
    mac = hmac.new(public.as_pem(private=False), f"{head}.{body}".encode(), hashlib.sha256)
    with pytest.raises(TokenRejected, match="symmetric algorithm HS256"):
        await check.validate(f"{head}.{body}.{b64(mac.digest())}")
    ps = b64(json.dumps({"alg": "PS256", "kid": public.kid}).encode())
    with pytest.raises(TokenRejected, match="not allowed"):
        await check.validate(f"{ps}.{body}.AAAA")
    crit = b64(json.dumps({"alg": "RS256", "kid": public.kid, "crit": ["exp"]}).encode())
    with pytest.raises(TokenRejected, match="critical"):
        await check.validate(f"{crit}.{body}.AAAA")
    assert keys.fetches <= 1  # refused before any key lookup but the first
    for junk in ("", "a.b", "a.b.c.d", "!!!.???.###", "x" * 20_000):
        with pytest.raises(TokenRejected):
            await check.validate(junk)


async def test_discovery_of_a_missing_provider_fails_cleanly(http: httpx.AsyncClient) -> None:
    from tests.fixtures.wardgate import free_port

    with pytest.raises(ProviderError, match="discovery"):
        await Discovery(f"http://127.0.0.1:{free_port()}", http).metadata()
