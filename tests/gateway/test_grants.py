"""Roles, grants and credential narrowing (gateway.policy.grants)."""

from __future__ import annotations

import pytest

from gateway.config import GatewayConfig
from gateway.policy.approval import ReviewTerms
from gateway.policy.grants import AccessPolicy, Grant, Role

POLICY = AccessPolicy(
    [
        Role("analysts", groups=frozenset({"data"}), grants=(Grant("pg-*", "read-only"),)),
        Role(
            "dba",
            groups=frozenset({"dba"}),
            grants=(Grant("pg-main", "admin"), Grant("pg-*", "read-write")),
        ),
        Role("oncall", users=frozenset({"ops-bot"}), grants=(Grant("cache", "read-write"),)),
        Role("platform", groups=frozenset({"platform"}), admin=True),
    ]
)


@pytest.mark.parametrize(
    ("user", "groups", "connection", "access"),
    [
        ("ann", ("data",), "pg-main", "read-only"),
        ("ann", ("data", "dba"), "pg-main", "admin"),  # the highest grant wins
        ("ann", ("data", "dba"), "pg-other", "read-write"),
        ("ann", ("data",), "cache", None),
        ("ann", (), "pg-main", None),
        ("ops-bot", (), "cache", "read-write"),  # granted by name
        ("ann", ("DATA",), "pg-main", None),  # group names are case-sensitive
    ],
)
def test_roles_grant_connections(
    user: str, groups: tuple[str, ...], connection: str, access: str | None
) -> None:
    decision = POLICY.decide(user=user, groups=groups, is_admin=False, connection=connection)
    assert decision.access == access


def test_admins_get_everything_and_roles_can_make_admins() -> None:
    assert POLICY.decide(user="root", groups=(), is_admin=True, connection="x").access == "admin"
    assert POLICY.is_admin("pat", ("platform",))
    assert not POLICY.is_admin("ann", ("data", "dba"))


def test_credentials_only_narrow() -> None:
    bound = POLICY.decide(
        user="root", groups=(), is_admin=True, connection="pg-main", bound_connection="pg-other"
    )
    assert bound.access is None and "pg-other" in bound.reason
    scoped = POLICY.decide(
        user="ann", groups=("dba",), is_admin=False, connection="pg-main", scopes=("cache",)
    )
    assert scoped.access is None and "scopes" in scoped.reason
    in_scope = POLICY.decide(
        user="ann", groups=("dba",), is_admin=False, connection="pg-main", scopes=("pg-*",)
    )
    assert in_scope.access == "admin"
    admin_scope_only = POLICY.decide(
        user="root", groups=(), is_admin=True, connection="pg-main", scopes=("admin",)
    )
    assert admin_scope_only.access is None  # "admin" is not a connection pattern


def test_default_access_applies_only_without_a_grant() -> None:
    policy = AccessPolicy([], default_access="read-only")
    assert policy.decide(user="x", groups=(), is_admin=False, connection="y").access == "read-only"
    assert AccessPolicy().decide(user="x", groups=(), is_admin=False, connection="y").access is None


def test_config_builds_the_policy_and_refuses_bad_levels() -> None:
    cfg = GatewayConfig.model_validate(
        {
            "roles": [
                {
                    "name": "r",
                    "groups": ["g"],
                    "grants": [{"connection": "a", "access": "read-write"}],
                }
            ],
            "identity": {"default_access": "none"},
        }
    )
    policy = cfg.access_policy()
    assert policy.default_access is None
    assert policy.decide(user="u", groups=("g",), is_admin=False, connection="a").access == (
        "read-write"
    )
    with pytest.raises(ValueError, match="access must be one of"):
        GatewayConfig.model_validate(
            {"roles": [{"name": "r", "grants": [{"connection": "a", "access": "write"}]}]}
        )
    with pytest.raises(ValueError, match="not allowed"):
        GatewayConfig.model_validate(
            {
                "identity": {
                    "oidc": {"issuer": "https://i", "client_id": "c", "algorithms": ["none"]}
                }
            }
        )
    with pytest.raises(ValueError, match="local_users is for setups without an IdP"):
        GatewayConfig.model_validate(
            {"identity": {"local_users": True, "oidc": {"issuer": "https://i", "client_id": "c"}}}
        )


def _on_request(max_duration: int) -> AccessPolicy:
    terms = ReviewTerms.model_validate(
        {"approvers": {"groups": ["dba"]}, "max_duration": max_duration}
    )
    grant = Grant("pg-prod", "read-write", request=terms)
    return AccessPolicy([Role("devs", groups=frozenset({"dev"}), grants=(grant,))])


@pytest.mark.parametrize(
    ("max_duration", "hint"), [(8 * 3600, "1h"), (30 * 60, "30m"), (90, "90s")]
)
def test_a_refusal_says_how_to_request_access_when_a_request_would_grant_it(
    max_duration: int, hint: str
) -> None:
    policy = _on_request(max_duration)
    refused = policy.decide(user="ann", groups=("dev",), is_admin=False, connection="pg-prod")
    assert refused.access is None
    assert refused.refusal("ann", "pg-prod") == (
        "user 'ann' needs an approved access request for 'pg-prod': "
        f'wardgate request pg-prod --for {hint} --reason "..."'
    )
    # With the request approved, the grant holds; without any grant, no hint.
    granted = policy.decide(
        user="ann", groups=("dev",), is_admin=False, connection="pg-prod", requested={"pg-prod"}
    )
    assert granted.access == "read-write"
    stranger = policy.decide(user="bo", groups=(), is_admin=False, connection="pg-prod")
    assert stranger.refusal("bo", "pg-prod") == "user 'bo' has no access to connection 'pg-prod'"
