"""The relying party's validator against a real OpenID provider (another process).

Discovery and the JWKS come from the running provider; tokens are signed by it (its
test-only `/test/sign`), or forged here.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey

from gateway.identity.oidc import (
    Discovery,
    JwksCache,
    JwtValidator,
    OidcClient,
    ProviderError,
    TokenRejected,
)
from tests.fixtures.forge import Signer
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


# ---- the issuer's keys: weak, misused or published private keys are refused -------------


@pytest.fixture
def published(oidc_provider: OidcProvider) -> Iterator[Callable[..., None]]:
    """Publish extra keys in the provider's JWKS for one test; withdrawn afterwards."""

    def publish(*jwks: dict[str, Any]) -> None:
        oidc_provider.publish_keys(list(jwks))

    try:
        yield publish
    finally:
        oidc_provider.publish_keys([])


def signed(idp: OidcProvider, signer: Signer, alg: str | None = None, **header: Any) -> str:
    return signer.token(claims(idp), alg, **header)


WEAK_KEYS: dict[str, tuple[Callable[[], Signer], Callable[[Signer], dict[str, Any]], str]] = {
    # case: (the signer, the JWK the provider publishes for it, why it is refused)
    "512-bit RSA": (lambda: Signer.rsa(512), lambda s: s.jwk, "RSA key of 512 bits"),
    "1024-bit RSA": (lambda: Signer.rsa(1024), lambda s: s.jwk, "RSA key of 1024 bits"),
    "RSA published for encryption": (
        lambda: Signer.rsa(2048, use="enc"), lambda s: s.jwk, "use is 'enc'"
    ),
    "RSA with key_ops encrypt": (
        lambda: Signer.rsa(2048, key_ops=["encrypt", "wrapKey"]), lambda s: s.jwk, "key_ops"
    ),
    "RSA with alg RSA-OAEP": (
        lambda: Signer.rsa(2048, alg="RSA-OAEP"), lambda s: s.jwk, "alg 'RSA-OAEP'"
    ),
    "published private key": (
        lambda: Signer.rsa(2048), lambda s: s.private_jwk(), "private key members (d)"
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(WEAK_KEYS))
async def test_weak_keys_in_the_jwks_are_refused_and_logged_once(
    oidc_provider: OidcProvider,
    http: httpx.AsyncClient,
    published: Callable[..., None],
    caplog: pytest.LogCaptureFixture,
    case: str,
) -> None:
    make, jwk_of, why = WEAK_KEYS[case]
    signer = make()
    published(jwk_of(signer))
    check, keys = validator(oidc_provider, http, min_refresh=0)
    token = signed(oidc_provider, signer)
    for _ in range(3):  # each unknown-looking kid re-reads the JWKS; the log says it once
        with pytest.raises(
            TokenRejected, match=f"signing key '{signer.kid}' is refused: .*{re.escape(why)}"
        ):
            await check.validate(token)
    assert keys.fetches >= 2
    lines = [r.getMessage() for r in caplog.records if signer.kid in r.getMessage()]
    assert len(lines) == 1 and why in lines[0], lines
    assert signer.private_jwk()["d"] not in caplog.text  # a published secret is not logged
    # The provider's own key still works next to the refused one.
    await check.validate(oidc_provider.sign(claims(oidc_provider)))


async def test_a_secp256k1_key_is_refused(
    oidc_provider: OidcProvider, http: httpx.AsyncClient, published: Callable[..., None]
) -> None:
    k1 = Signer.ec("secp256k1")
    published(k1.jwk)
    check, _ = validator(oidc_provider, http)
    check.algorithms = frozenset({"RS256", "ES256"})
    with pytest.raises(TokenRejected, match="curve 'secp256k1' is not allowed"):
        await check.validate(signed(oidc_provider, k1, "ES256"))


async def test_a_good_published_key_verifies(
    oidc_provider: OidcProvider, http: httpx.AsyncClient, published: Callable[..., None]
) -> None:
    rsa, p256 = Signer.rsa(2048, use="sig", key_ops=["verify"]), Signer.ec("P-256", alg="ES256")
    published(rsa.jwk, p256.jwk)
    check, _ = validator(oidc_provider, http)
    check.algorithms = frozenset({"RS256", "PS256", "ES256"})
    assert (await check.validate(signed(oidc_provider, rsa)))["sub"] == "u-1"
    assert (await check.validate(signed(oidc_provider, rsa, "PS256")))["sub"] == "u-1"
    assert (await check.validate(signed(oidc_provider, p256)))["sub"] == "u-1"


# ---- kid and algorithm confusion -------------------------------------------------------


async def test_kid_confusion_is_refused(
    oidc_provider: OidcProvider, http: httpx.AsyncClient, published: Callable[..., None]
) -> None:
    p256, p384 = Signer.ec("P-256"), Signer.ec("P-384")
    pinned = Signer.rsa(2048, alg="RS256")
    twin = Signer.rsa(2048, kid=p256.kid)  # an RSA key published under the EC key's kid
    published(p256.jwk, p384.jwk, pinned.jwk)
    check, _ = validator(oidc_provider, http)
    check.algorithms = frozenset({"RS256", "RS384", "ES256", "ES384"})
    own_kid = oidc_provider.jwks()["keys"][0]["kid"]
    attacker = Signer.rsa(2048, kid=own_kid)
    cases = [
        # signed by another key under the provider's own kid
        (attacker.token(claims(oidc_provider)), "bad signature"),
        # RS256 under an EC key's kid
        (twin.token(claims(oidc_provider), "RS256"), "does not fit algorithm RS256"),
        # ES384 under a P-256 key's kid (the curve decides)
        (p256.token(claims(oidc_provider), "ES384", kid=p256.kid), "does not fit algorithm ES384"),
        # a key pinned to RS256 used for RS384
        (pinned.token(claims(oidc_provider), "RS384"), "does not fit algorithm RS384"),
        # no kid while the issuer has several keys
        (p256.token(claims(oidc_provider), kid=None), "unknown signing key"),
        # the attacker's key embedded in the header, or pointed to: never used
        (attacker.token(claims(oidc_provider), kid="x", jwk=attacker.jwk), "unknown signing key"),
        (attacker.token(claims(oidc_provider), kid="x", jku="http://127.0.0.1:1/j"), "unknown"),
        (attacker.token(claims(oidc_provider), kid=["a"]), "malformed kid"),
        (attacker.token(claims(oidc_provider), kid="../../etc/passwd"), "unknown signing key"),
        (attacker.token(claims(oidc_provider), "RS256 "), "not allowed"),
        (attacker.token(claims(oidc_provider), "Rs256"), "not allowed"),
        (attacker.token(claims(oidc_provider), "HS512"), "symmetric"),
        (attacker.token(claims(oidc_provider), "NONE"), "alg none"),
        (attacker.token(claims(oidc_provider), "ES256K"), "not allowed"),
    ]
    for token, why in cases:
        with pytest.raises(TokenRejected, match=why):
            await check.validate(token)


# ---- time claims: numbers between 1970 and 9999, nothing else --------------------------

TIME_CASES = [
    ('"exp": NaN', "malformed exp"),
    ('"exp": Infinity', "malformed exp"),
    ('"exp": -Infinity', "malformed exp"),
    ('"exp": 1e400', "malformed exp"),  # parsed as Infinity
    ('"exp": 1e300', "malformed exp"),
    ('"exp": 99999999999999999999', "malformed exp"),
    ('"exp": 253402300800', "malformed exp"),
    ('"exp": -1', "malformed exp"),
    ('"exp": "4102444800"', "malformed exp"),
    ('"exp": true', "malformed exp"),
    ('"exp": null', "malformed exp"),
    ('"exp": [4102444800]', "malformed exp"),
    ('"exp": {"t": 4102444800}', "malformed exp"),
    ('"nbf": NaN', "malformed nbf"),
    ('"nbf": -Infinity', "malformed nbf"),
    ('"nbf": "0"', "malformed nbf"),
    ('"iat": NaN', "malformed iat"),
    ('"iat": Infinity', "malformed iat"),
    ('"iat": false', "malformed iat"),
]


@pytest.mark.parametrize(("member", "why"), TIME_CASES)
async def test_time_claims_must_be_finite_dates(
    oidc_provider: OidcProvider,
    http: httpx.AsyncClient,
    published: Callable[..., None],
    member: str,
    why: str,
) -> None:
    signer = Signer.rsa(2048)
    published(signer.jwk)
    check, _ = validator(oidc_provider, http)
    base = {k: v for k, v in claims(oidc_provider).items() if k != member.split('"')[1]}
    text = json.dumps(base)[:-1] + ", " + member + "}"
    with pytest.raises(TokenRejected, match=why):
        await check.validate(signer.token(text))
    # The same key with sane times validates (the case, not the key, is refused).
    await check.validate(signer.token(claims(oidc_provider, exp=int(time.time()) + 60.5)))


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"aud": [CLIENT, "other"]}, "several audiences"),  # no azp naming us
        ({"aud": ["other", "another"]}, "wrong audience"),
        ({"aud": []}, "wrong audience"),
        ({"aud": {"a": CLIENT}}, "wrong audience"),
        ({"iss": "SLASH"}, "wrong issuer"),  # the issuer with a trailing slash
        ({"sub": "x" * 256}, "longer than 255"),
        ({"sub": 42}, "no subject"),
        ({"sub": ""}, "no subject"),
    ],
)
async def test_more_claims_rules(
    oidc_provider: OidcProvider,
    http: httpx.AsyncClient,
    changes: dict[str, Any],
    reason: str,
) -> None:
    if changes.get("iss") == "SLASH":
        changes = {"iss": oidc_provider.issuer + "/"}
    check, _ = validator(oidc_provider, http)
    with pytest.raises(TokenRejected, match=reason):
        await check.validate(oidc_provider.sign(claims(oidc_provider, **changes)))
    ok = claims(oidc_provider, aud=[CLIENT, "other"], azp=CLIENT)
    assert (await check.validate(oidc_provider.sign(ok)))["azp"] == CLIENT


# ---- discovery: a token issuer needs only issuer and jwks_uri --------------------------


async def test_a_bare_discovery_document_serves_token_validation_not_sign_in(
    tmp_path: Path, http: httpx.AsyncClient
) -> None:
    bare = start_provider(tmp_path, bare=True)
    try:
        assert set(bare.discovery()) == {"issuer", "jwks_uri"}
        check, _ = validator(bare, http)
        assert (await check.validate(bare.sign(claims(bare))))["sub"] == "u-1"
        with pytest.raises(ProviderError, match="authorization_endpoint missing"):
            await Discovery(bare.issuer, http, sign_in=True).metadata()
        client = OidcClient(
            issuer=bare.issuer, client_id=CLIENT, client_secret=None, scopes=["openid"],
            algorithms=["RS256"], leeway=0, http=http,
        )  # fmt: skip
        with pytest.raises(ProviderError, match="authorization_endpoint missing"):
            await client.authorization_url(
                redirect_uri="http://127.0.0.1:1/cb", state="s", nonce="n", code_challenge="c"
            )
    finally:
        bare.proc.stop()
