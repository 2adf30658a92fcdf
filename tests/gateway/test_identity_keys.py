"""Which published JWKS keys may verify tokens (gateway/identity/keys.py), pure."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.identity import keys
from tests.fixtures.forge import Signer, b64_int

RSA2048 = Signer.rsa(2048, kid="good").jwk
RSA512 = Signer.rsa(512, kid="weak").jwk
RSA1024 = Signer.rsa(1024, kid="weak1024").jwk
P256 = Signer.ec("P-256", kid="p256").jwk
P384 = Signer.ec("P-384", kid="p384").jwk
K256 = Signer.ec("secp256k1", kid="k1").jwk
ED25519 = {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}


@pytest.mark.parametrize(
    "jwk",
    [
        RSA2048,
        P256,
        P384,
        ED25519,
        {**RSA2048, "use": "sig"},
        {**RSA2048, "key_ops": ["verify"]},
        {**RSA2048, "key_ops": ["sign", "verify"]},
        {**RSA2048, "alg": "PS256"},
        {**P256, "alg": "ES256"},
        {**P384, "alg": "ES384", "use": "sig"},
    ],
)
def test_fit_keys_are_usable(jwk: dict[str, Any]) -> None:
    assert keys.unfit(jwk) is None


@pytest.mark.parametrize(
    ("jwk", "why"),
    [
        (RSA512, "RSA key of 512 bits (at least 2048 needed)"),
        (RSA1024, "RSA key of 1024 bits"),
        ({**RSA2048, "n": b64_int((1 << 2046) + 1)}, "RSA key of 2047 bits"),
        ({**RSA2048, "e": b64_int(1)}, "exponent"),
        ({**RSA2048, "e": b64_int(65536)}, "exponent"),
        ({**RSA2048, "n": "!!not-base64!!"}, "readable modulus"),
        ({**RSA2048, "n": b64_int(1 << 20000)}, "at most 16384"),
        ({k: v for k, v in RSA2048.items() if k != "e"}, "readable modulus or exponent"),
        (K256, "curve 'secp256k1' is not allowed"),
        ({**P256, "crv": "P-192"}, "curve 'P-192'"),
        ({**ED25519, "crv": "X25519"}, "curve 'X25519'"),
        ({"kty": "oct", "k": "c2VjcmV0"}, "symmetric"),
        ({"kty": "PQ", "x": "AAAA"}, "not supported"),
        ({**RSA2048, "d": "AAAA"}, "private key members (d)"),
        ({**P256, "d": "AAAA"}, "private key members (d)"),
        ({**RSA2048, "use": "enc"}, "use is 'enc'"),
        ({**RSA2048, "use": ["sig"]}, "malformed use"),
        ({**P256, "crv": ["P-256"]}, "malformed crv"),
        ({**RSA2048, "alg": ["RS256"]}, "malformed alg"),
        ({**RSA2048, "kty": {"RSA": 1}}, "malformed kty"),
        ({**RSA2048, "key_ops": ["encrypt"]}, "not for signature verification"),
        ({**RSA2048, "key_ops": ["sign"]}, "not for signature verification"),
        ({**RSA2048, "key_ops": ["verify", "encrypt"]}, "not for signature verification"),
        ({**RSA2048, "key_ops": "verify"}, "malformed key_ops"),
        ({**RSA2048, "alg": "RSA-OAEP"}, "not an asymmetric signature algorithm"),
        ({**RSA2048, "alg": "HS256"}, "not an asymmetric signature algorithm"),
        ({**RSA2048, "alg": "none"}, "not an asymmetric signature algorithm"),
        ({**RSA2048, "alg": "ES256"}, "does not fit a RSA key"),
        ({**P256, "alg": "ES384"}, "does not fit a EC key"),
        ({**RSA2048, "kid": 7}, "malformed kid"),
    ],
)
def test_unfit_keys_are_refused_with_the_reason(jwk: dict[str, Any], why: str) -> None:
    reason = keys.unfit(jwk)
    assert reason is not None and why in reason


@pytest.mark.parametrize(
    ("jwk", "alg", "ok"),
    [
        (RSA2048, "RS256", True),
        (RSA2048, "PS512", True),
        (RSA2048, "ES256", False),
        (RSA2048, "EdDSA", False),
        (RSA2048, "HS256", False),
        (RSA2048, "none", False),
        ({**RSA2048, "alg": "RS256"}, "RS384", False),  # one key, one algorithm
        ({**RSA2048, "alg": "RS256"}, "RS256", True),
        (P256, "ES256", True),
        (P256, "ES384", False),  # the curve decides the algorithm
        (P384, "ES384", True),
        (P384, "RS256", False),
        (ED25519, "EdDSA", True),
        (ED25519, "ES256", False),
    ],
)
def test_a_key_verifies_only_algorithms_that_fit_it(
    jwk: dict[str, Any], alg: str, ok: bool
) -> None:
    assert keys.fits(jwk, alg) is ok


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)
members = st.sampled_from(["kty", "crv", "n", "e", "x", "y", "d", "use", "key_ops", "alg", "kid"])


@given(
    base=st.sampled_from([RSA2048, P256, ED25519, {}]),
    changes=st.dictionaries(members, json_values, max_size=4),
    alg=json_values | st.sampled_from(list(keys.SIGNATURE_ALGORITHMS)),
)
def test_any_published_json_is_judged_without_an_error(
    base: dict[str, Any], changes: dict[str, Any], alg: Any
) -> None:
    jwk = {**base, **changes}
    reason = keys.unfit(jwk)
    assert reason is None or isinstance(reason, str)
    if reason is None:
        assert isinstance(keys.fits(jwk, alg), bool)
