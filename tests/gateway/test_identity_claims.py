"""Claims to users and groups, workload trust matching, local passwords and TOTP."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from gateway.config import ConfigError, load_config
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


# ---- claim globs: `*` within one segment, `**` whole segments, no tricks ---------------

GLOB_CASES = [
    # (value, pattern, matches)
    ("acme/app", "acme/*", True),
    ("acme/app-2.v", "acme/*", True),
    ("acme/app/../../evil/x", "acme/*", False),  # the attack run's cases
    ("acme/", "acme/*", False),
    ("acme/x\n", "acme/*", False),
    ("refs/tags/v1/../../heads/main", "refs/tags/v*", False),
    ("refs/tags/v1.2", "refs/tags/v*", True),
    ("refs/tags/v", "refs/tags/v*", False),  # `*` is never empty
    ("acme/app/x", "acme/*", False),  # `*` never crosses /
    ("acme/app/x", "acme/*/x", True),
    ("acme//x", "acme/*/x", False),
    ("acme/../x", "acme/*/x", False),
    ("acme/./x", "acme/*/x", False),
    ("acme/.", "acme/*", False),
    ("acme/..", "acme/*", False),
    ("acme/..", "acme/**", False),
    ("acme/../app", "acme/../app", False),  # a dot segment never matches, even literally
    ("acme/app\r", "acme/app*", False),
    ("acme/a\x00b", "acme/*", False),
    ("acme/a\u202eb", "acme/*", False),  # a bidirectional override
    ("acme/a\u200bb", "acme/*", False),  # a zero-width space
    ("acme/a\u2028b", "acme/*", False),
    ("acme/a b", "acme/*", True),
    ("acme/ü", "acme/*", True),
    ("acme/app/sub", "acme/**", True),
    ("acme/app", "acme/**", True),
    ("acme", "acme/**", False),  # `**` is never empty either
    ("acme/", "acme/**", False),
    ("acme//", "acme/**", False),
    ("acme//x", "acme/**", True),
    ("a/b/c/d", "a/**/d", True),
    ("a/d", "a/**/d", False),
    ("a/b/c", "**", True),
    ("", "*", False),
    ("", "", False),
    ("x", "*", True),
    ("a/b", "*", False),
    ("Acme/app", "acme/*", False),  # case-sensitive
    ("acme/app", "acme/app", True),
    ("acme/app2", "acme/app", False),  # whole value, not a prefix
    ("xacme/app", "acme/app", False),
    ("refs/tags/v12", "refs/tags/v[0-9]*", True),
    ("refs/tags/vx1", "refs/tags/v[0-9]*", False),
    ("refs/tags/vx1", "refs/tags/v[!0-9]*", True),
    ("abc", "a?c", True),
    ("ac", "a?c", False),
    ("a/c", "a?c", False),
    ("a]b", "a[]]b", True),
    ("a^b", "a[^]b", True),
    ("a&b", "a[&~]b", True),
    ("a[b", "a[b", True),  # an unclosed [ is itself
    ("aXbXc", "a*b*c", True),
    ("abc", "a*b*c", False),
    # Real claim shapes: GitHub's sub, GitLab's config ref URI (with an empty segment).
    ("repo:acme/app:ref:refs/heads/main", "repo:acme/*:ref:refs/heads/main", True),
    ("repo:acme/app/x:ref:refs/heads/main", "repo:acme/*:ref:refs/heads/main", False),
    ("repo:acme/app:ref:refs/heads/main", "repo:acme/app:ref:refs/heads/*", True),
    ("repo:acme/app:ref:refs/heads/a/b", "repo:acme/app:ref:refs/heads/*", False),
    ("repo:acme/app:ref:refs/heads/a/b", "repo:acme/app:ref:refs/heads/**", True),
    ("gl.example/g/p//.gitlab-ci.yml@refs/heads/main", "gl.example/g/p//*@refs/heads/*", True),
    ("acme/a/.github/w/deploy.yml@refs/heads/main", "acme/a/.github/w/*.yml@refs/heads/main", True),
]  # fmt: skip


@pytest.mark.parametrize(("value", "pattern", "ok"), GLOB_CASES)
def test_claim_globs(value: str, pattern: str, ok: bool) -> None:
    assert cl.glob_match(value, pattern) is ok


@pytest.mark.parametrize(
    ("pattern", "problem"),
    [
        ("", "empty"),
        ("acme/**x", "whole segment"),
        ("acme/a**", "whole segment"),
        ("acme/***", "whole segment"),
        ("acme/../x", "'..' segment"),
        ("./x", "'.' segment"),
        ("acme/x\n", "control"),
        ("acme/\u202e*", "control"),
        ("v[z-a]", "character class"),
    ],
)
def test_unusable_patterns_are_named(pattern: str, problem: str) -> None:
    found = cl.pattern_problem(pattern)
    assert found is not None and problem in found
    assert not cl.glob_match("acme/x", pattern)  # and match nothing if one slipped through


@pytest.mark.parametrize(
    ("claims", "problem"),
    [
        ({"repository": "acme/**x"}, "claim 'repository', pattern 'acme/**x': '**' must be"),
        ({"ref": ["refs/heads/main", "refs/../x"]}, "'..' segment never matches"),
        ({"ref": []}, "an empty list matches nothing"),
        ({"sub": ""}, "empty pattern"),
    ],
)
def test_the_config_refuses_unusable_patterns(
    tmp_path: Path, claims: dict[str, object], problem: str
) -> None:
    cfg = tmp_path / "gateway.yaml"
    entry = {"name": "ci", "issuer": "https://ci", "audience": "wg", "claims": claims}
    cfg.write_text(yaml.safe_dump({"identity": {"workload": [entry]}}))
    with pytest.raises(ConfigError) as refused:
        load_config(cfg)
    assert f"{cfg}: identity.workload[0].claims: " in str(refused.value)
    assert problem in str(refused.value)
    group = {"claim": "email", "value": "*@x/../y", "group": "g"}
    oidc = {"issuer": "https://i", "client_id": "c", "claim_groups": [group]}
    cfg.write_text(yaml.safe_dump({"identity": {"oidc": oidc}}))
    with pytest.raises(ConfigError, match=r"'\.\.' segment never matches"):
        load_config(cfg)


segment_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp")),
    min_size=1,
    max_size=12,
).filter(lambda s: "/" not in s and s not in (".", ".."))


@given(prefix=segment_text, rest=st.lists(segment_text, min_size=1, max_size=4))
def test_a_star_matches_exactly_one_nonempty_segment(prefix: str, rest: list[str]) -> None:
    pattern = glob_escape(prefix) + "/*"
    assert cl.glob_match(f"{prefix}/{rest[0]}", pattern)
    assert not cl.glob_match("/".join([prefix, *rest]), pattern) or len(rest) == 1
    assert not cl.glob_match(f"{prefix}/", pattern)
    assert cl.glob_match("/".join([prefix, *rest]), glob_escape(prefix) + "/**")


@given(
    segments=st.lists(segment_text, min_size=1, max_size=5),
    dots=st.sampled_from([".", ".."]),
    where=st.integers(min_value=0, max_value=5),
    pattern=st.sampled_from(["*", "**", "*/**", "**/*", "a*/**", "**/x"]),
)
def test_a_dot_segment_never_matches(
    segments: list[str], dots: str, where: int, pattern: str
) -> None:
    segments.insert(min(where, len(segments)), dots)
    assert not cl.glob_match("/".join(segments), pattern)


@given(
    value=segment_text,
    bad=st.characters(whitelist_categories=("Cc", "Cf", "Zl", "Zp")),
    where=st.integers(min_value=0, max_value=12),
)
def test_a_control_character_never_matches(value: str, bad: str, where: int) -> None:
    tainted = value[:where] + bad + value[where:]
    for pattern in ("*", "**", "?*", glob_escape(value) + "*", "*" + glob_escape(value)):
        assert not cl.glob_match(tainted, pattern)


def glob_escape(text: str) -> str:
    """A pattern matching `text` literally: each special character as a one-character set."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)


def test_no_pattern_backtracks_on_a_long_value() -> None:
    import time

    started = time.monotonic()
    assert not cl.glob_match("a" * 15_000 + "b", "*a*a*a*a*a*a*a*a*c")
    assert not cl.glob_match("/".join(["a"] * 5_000), "**/**/**/**/b")
    assert time.monotonic() - started < 2


def test_non_string_claims_and_lists() -> None:
    trust = Trust(claims={"run_attempt": "1", "ok": "true", "ref": "refs/heads/*"})
    ok = {"run_attempt": 1, "ok": True, "ref": "refs/heads/main"}
    assert cl.trust_matches(ok, trust) is None
    for bad in (
        {**ok, "run_attempt": float("nan")},
        {**ok, "run_attempt": [1]},
        {**ok, "run_attempt": None},
        {**ok, "ref": ["refs/heads/main"]},
        {**ok, "ref": {"x": 1}},
    ):
        assert cl.trust_matches(bad, trust) is not None
