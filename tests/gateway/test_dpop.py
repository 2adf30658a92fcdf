"""DPoP proof checks (gateway/identity/dpop.py): one test per rule of RFC 9449 §4.3."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from joserfc import jws
from joserfc.jwk import ECKey, OctKey, OKPKey

from gateway.identity.dpop import DpopError, check_proof, replay_digest
from shared.dpop import access_token_hash, make_proof, normalise_url

URL = "https://gw.example:8443/api/connections"
TOKEN = "wgk_example"
KEY = ECKey.generate_key("P-256")


def _b64(value: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()


def _signed(header: dict[str, Any], claims: dict[str, Any], key: object, alg: str) -> str:
    return jws.serialize_compact(header, json.dumps(claims).encode(), key, algorithms=[alg])  # type: ignore[arg-type]


def _claims(**overrides: object) -> dict[str, object]:
    claims: dict[str, object] = {
        "jti": "j1",
        "htm": "GET",
        "htu": URL,
        "iat": int(time.time()),
        "ath": access_token_hash(TOKEN),
    }
    claims.update(overrides)
    return claims


def _check(proof: str, **kw: object) -> object:
    args: dict[str, object] = {"method": "GET", "url": URL, "access_token": TOKEN}
    args.update(kw)
    return check_proof(proof, **args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "key",
    [ECKey.generate_key("P-256"), OKPKey.generate_key("Ed25519")],
    ids=["ES256", "Ed25519"],
)
def test_a_valid_proof_names_its_key_thumbprint(key: ECKey | OKPKey) -> None:
    proof = make_proof(key, method="get", url=URL + "?q=1#f", access_token=TOKEN)
    checked = _check(proof)
    assert checked.jkt == key.thumbprint()  # type: ignore[attr-defined]


def test_a_missing_proof_is_refused() -> None:
    with pytest.raises(DpopError, match="DPoP proof header is required"):
        _check("")


def test_typ_must_be_dpop_jwt() -> None:
    header = {"typ": "JWT", "alg": "ES256", "jwk": KEY.as_dict(private=False)}
    with pytest.raises(DpopError, match="typ is not dpop\\+jwt"):
        _check(_signed(header, _claims(), KEY, "ES256"))


@pytest.mark.parametrize("alg", ["none", "HS256"])
def test_alg_none_and_hmac_are_refused(alg: str) -> None:
    header = {"typ": "dpop+jwt", "alg": alg, "jwk": {"kty": "oct", "k": "AAAA"}}
    proof = f"{_b64(header)}.{_b64(_claims())}."
    with pytest.raises(DpopError, match="alg must be one of"):
        _check(proof)


def test_a_symmetric_jwk_is_refused() -> None:
    oct_key = OctKey.generate_key(256)
    header = {"typ": "dpop+jwt", "alg": "ES256", "jwk": oct_key.as_dict()}
    with pytest.raises(DpopError, match="not a public EC or OKP key"):
        _check(f"{_b64(header)}.{_b64(_claims())}.AAAA")


def test_a_private_jwk_is_refused() -> None:
    header = {"typ": "dpop+jwt", "alg": "ES256", "jwk": KEY.as_dict(private=True)}
    with pytest.raises(DpopError, match="holds a private key"):
        _check(_signed(header, _claims(), KEY, "ES256"))


def test_a_signature_by_another_key_is_refused() -> None:
    other = ECKey.generate_key("P-256")
    header = {"typ": "dpop+jwt", "alg": "ES256", "jwk": KEY.as_dict(private=False)}
    with pytest.raises(DpopError, match="signature does not verify"):
        _check(_signed(header, _claims(), other, "ES256"))


def test_htm_must_be_the_request_method() -> None:
    proof = make_proof(KEY, method="POST", url=URL, access_token=TOKEN)
    with pytest.raises(DpopError, match="htm is not GET"):
        _check(proof)


def test_htu_must_be_the_request_url() -> None:
    proof = make_proof(
        KEY, method="GET", url="https://gw.example:8443/api/other", access_token=TOKEN
    )
    with pytest.raises(DpopError, match="htu is not this request's URL"):
        _check(proof)


def test_htu_is_compared_normalised() -> None:
    assert normalise_url("HTTPS://GW.example:443/a?b#c") == "https://gw.example/a"
    assert normalise_url("http://h") == "http://h/"
    assert normalise_url("http://h:8080/x") == "http://h:8080/x"


def test_iat_outside_the_window_is_refused() -> None:
    proof = make_proof(KEY, method="GET", url=URL, access_token=TOKEN, iat=time.time() - 120)
    with pytest.raises(DpopError, match="iat is more than 60 s"):
        _check(proof)
    assert _check(proof, window=300.0)


def test_iat_in_the_future_is_refused() -> None:
    proof = make_proof(KEY, method="GET", url=URL, access_token=TOKEN, iat=time.time() + 120)
    with pytest.raises(DpopError, match="iat is more than"):
        _check(proof)


def test_a_proof_without_jti_is_refused() -> None:
    header = {"typ": "dpop+jwt", "alg": "ES256", "jwk": KEY.as_dict(private=False)}
    claims = _claims()
    del claims["jti"]
    with pytest.raises(DpopError, match="has no jti"):
        _check(_signed(header, claims, KEY, "ES256"))


def test_ath_must_match_the_access_token() -> None:
    proof = make_proof(KEY, method="GET", url=URL, access_token="wgk_other")
    with pytest.raises(DpopError, match="ath does not match"):
        _check(proof)
    without = make_proof(KEY, method="GET", url=URL)
    with pytest.raises(DpopError, match="ath does not match"):
        _check(without)


def test_the_replay_digest_is_per_key_and_jti() -> None:
    one = _check(make_proof(KEY, method="GET", url=URL, access_token=TOKEN, jti="x"))
    two = _check(make_proof(KEY, method="GET", url=URL, access_token=TOKEN, jti="y"))
    again = _check(make_proof(KEY, method="GET", url=URL, access_token=TOKEN, jti="x"))
    assert replay_digest(one) == replay_digest(again)  # type: ignore[arg-type]
    assert replay_digest(one) != replay_digest(two)  # type: ignore[arg-type]


@given(st.text(max_size=300))
def test_garbage_is_refused_in_words(text: str) -> None:
    with pytest.raises(DpopError):
        _check(text)


@given(st.dictionaries(st.text(max_size=8), st.none() | st.integers() | st.text(max_size=8)))
def test_garbage_headers_are_refused_in_words(header: dict[str, object]) -> None:
    with pytest.raises(DpopError):
        _check(f"{_b64(header)}.{_b64(_claims())}.AAAA")
