"""Workload trust helpers (gateway/identity/workload.py) and the unverified token parse."""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.config import WorkloadTrust
from gateway.identity.oidc import MAX_NUMERIC_DATE, TokenRejected, unverified_header_and_claims
from gateway.identity.workload import WorkloadRefused, single_use_key

ISSUER = "https://token.actions.githubusercontent.com"


def trust(**changes: Any) -> WorkloadTrust:
    base: dict[str, Any] = {
        "name": "ci",
        "issuer": ISSUER,
        "audience": "wardgate",
        "claims": {"repository": "acme/*"},
        "single_use": True,
    }
    return WorkloadTrust.model_validate({**base, **changes})


def test_single_use_is_off_by_default() -> None:
    assert trust(single_use=False).single_use is False
    assert (
        WorkloadTrust.model_validate(
            {"name": "k8s", "issuer": ISSUER, "audience": "a", "claims": {"sub": "x"}}
        ).single_use
        is False
    )
    assert single_use_key(trust(single_use=False), {"exp": 1}, ISSUER) is None


def test_a_single_use_token_is_remembered_by_issuer_and_jti_until_exp_plus_leeway() -> None:
    found = single_use_key(trust(leeway=20), {"jti": "j-1", "exp": 1_800_000_000}, ISSUER)
    assert found is not None
    key, until = found
    assert len(key) == 32 and until == dt.datetime.fromtimestamp(1_800_000_020, dt.UTC)
    same = single_use_key(trust(name="other"), {"jti": "j-1", "exp": 1}, ISSUER)
    other_issuer = single_use_key(trust(), {"jti": "j-1", "exp": 1}, "https://gitlab.com")
    assert same is not None and same[0] == key  # one jti of one issuer, whichever entry
    assert other_issuer is not None and other_issuer[0] != key
    # An exp at the end of year 9999 plus leeway stays a date Python can hold.
    last = single_use_key(trust(leeway=300), {"jti": "j", "exp": MAX_NUMERIC_DATE}, ISSUER)
    assert last is not None and last[1].year == 9999


@pytest.mark.parametrize("jti", [None, "", 42, ["j"], {"j": 1}, True, "j" * 256])
def test_a_single_use_token_needs_a_usable_jti(jti: object) -> None:
    claims: dict[str, Any] = {"exp": 1_800_000_000}
    if jti is not None:
        claims["jti"] = jti
    with pytest.raises(WorkloadRefused) as refused:
        single_use_key(trust(), claims, ISSUER)
    assert refused.value.detail == "ci: no usable jti"
    assert "need a jti" in refused.value.shown


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@given(st.text(max_size=300) | st.binary(max_size=300).map(_b64))
def test_the_unverified_parse_refuses_junk_with_token_rejected_only(junk: str) -> None:
    for token in (junk, f"{junk}.{junk}.{junk}", f"{_b64(b'{}')}.{junk}.x"):
        with contextlib.suppress(TokenRejected):  # anything else fails the test
            unverified_header_and_claims(token)
