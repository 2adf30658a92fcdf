"""Claims to users and groups, workload trust matching, local passwords and TOTP."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from gateway.identity import claims as cl
from gateway.identity import local
from gateway.identity.credentials import is_loopback_redirect


@dataclass
class Rule:
    claim: str
    value: str
    group: str


@dataclass
class Trust:
    name: str = "ci"
    issuer: str = "https://ci"
    audience: str = "wardgate"
    claims: dict[str, str | list[str]] = field(default_factory=dict)


def test_user_name_comes_from_the_configured_claim_only() -> None:
    assert cl.user_name({"preferred_username": "alice"}, "preferred_username") == "alice"
    for bad in ({}, {"preferred_username": ""}, {"preferred_username": "a b"}, {"email": "x"}):
        with pytest.raises(cl.ClaimsError):
            cl.user_name(bad, "preferred_username")
    with pytest.raises(cl.ClaimsError):
        cl.user_name({"preferred_username": "x" * 200}, "preferred_username")


def test_groups_from_claim_and_rules() -> None:
    claims = {"groups": ["b", "a", "a", 3], "email": "x@example.com", "email_verified": True}
    rules = [
        Rule("email", "*@example.com", "staff"),
        Rule("email_verified", "true", "verified"),
        Rule("email", "*@other.org", "other"),
    ]
    assert cl.groups_from(claims, "groups", rules) == ("a", "b", "staff", "verified")
    assert cl.groups_from({"groups": "solo"}, "groups") == ("solo",)
    assert cl.groups_from({}, "groups") == ()


def test_workload_trust_matching() -> None:
    trust = Trust(claims={"repository": "acme/app", "ref": ["refs/heads/main", "refs/tags/v*"]})
    ok = {"repository": "acme/app", "ref": "refs/tags/v1.2"}
    assert cl.trust_matches(ok, trust) is None
    assert cl.trust_matches({**ok, "ref": "refs/heads/dev"}, trust) == "ref"
    assert cl.trust_matches({"ref": "refs/heads/main"}, trust) == "repository"
    assert cl.trust_matches({**ok, "repository": ["acme/app"]}, trust) == "repository"


def test_passwords_are_salted_scrypt() -> None:
    first, second = local.hash_password("correct horse"), local.hash_password("correct horse")
    assert first != second and first.startswith("scrypt$")
    assert local.verify_password("correct horse", first)
    assert not local.verify_password("wrong horse", first)
    assert not local.verify_password("correct horse", "garbage")


def test_totp_matches_rfc_6238_vectors() -> None:
    # RFC 6238 appendix B (SHA-1), the secret "12345678901234567890", last 6 digits.
    import base64

    secret = base64.b32encode(b"12345678901234567890").decode()
    vectors = {59: "287082", 1111111109: "081804", 1234567890: "005924", 2000000000: "279037"}
    for at, code in vectors.items():
        assert local.totp(secret, at) == code
    assert local.verify_totp(secret, "287082", at=59 + 30)  # one step of drift
    assert not local.verify_totp(secret, "287082", at=59 + 90)
    uri = local.provisioning_uri(secret, "ann")
    assert uri.startswith("otpauth://totp/Wardgate:ann?secret=")


@pytest.mark.parametrize(
    ("uri", "ok"),
    [
        ("http://127.0.0.1:5000/callback", True),
        ("http://localhost:5000/callback", True),
        ("http://[::1]:5000/cb", True),
        ("https://127.0.0.1:5000/callback", False),
        ("http://127.0.0.1/callback", False),
        ("http://evil.example:5000/callback", False),
        ("http://127.0.0.1.evil.example:5000/", False),
        ("http://127.0.0.1:5000/cb#frag", False),
        ("javascript:alert(1)", False),
    ],
)
def test_only_loopback_redirects_are_accepted(uri: str, ok: bool) -> None:
    assert is_loopback_redirect(uri) is ok
