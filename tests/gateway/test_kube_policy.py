"""Kubernetes guardrails: rules on verb, resource, subresource, namespace and name."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from gateway.config import GatewayConfig
from gateway.policy.kube import KubePolicy, KubePolicyConfig, review_text
from gateway.policy.rules import Subject
from shared.kubeapi import request_info

ALICE = Subject(user="alice", groups=("dev",))
OPS = Subject(user="olga", groups=("ops",), roles=("sre",))
BOT = Subject(user="ci", machine=True)


def policy(**config: Any) -> KubePolicy:
    return KubePolicy(KubePolicyConfig.model_validate(config))


RULES = [
    {"name": "no-prod-delete", "effect": "deny", "message": "needs a ticket",
     "match": {"connections": ["k8s-*"], "verbs": ["delete", "deletecollection"],
               "namespaces": ["prod"]}},
    {"name": "no-secrets-for-dev", "effect": "deny",
     "match": {"groups": ["dev"], "resources": ["secrets"]}},
    {"name": "no-exec-for-machines", "effect": "deny",
     "match": {"identity": "machine", "subresources": ["exec", "attach"]}},
    {"name": "sre-exec", "effect": "allow", "match": {"roles": ["sre"], "subresources": ["exec"]}},
]  # fmt: skip


@pytest.mark.parametrize(
    ("who", "method", "path", "allowed", "rule"),
    [
        (ALICE, "DELETE", "/api/v1/namespaces/prod/pods/a", False, "no-prod-delete"),
        (ALICE, "DELETE", "/api/v1/namespaces/prod/pods", False, "no-prod-delete"),
        (ALICE, "DELETE", "/api/v1/namespaces/dev/pods/a", True, None),
        (ALICE, "GET", "/api/v1/namespaces/dev/secrets/db", False, "no-secrets-for-dev"),
        (ALICE, "GET", "/api/v1/secrets", False, "no-secrets-for-dev"),
        (OPS, "GET", "/api/v1/namespaces/dev/secrets/db", True, None),
        (BOT, "GET", "/api/v1/namespaces/d/pods/a/exec", False, "no-exec-for-machines"),
        (OPS, "GET", "/api/v1/namespaces/d/pods/a/exec", True, "sre-exec"),
        (ALICE, "GET", "/api", True, None),  # discovery never matches resource conditions
    ],
)
def test_rules(who: Subject, method: str, path: str, allowed: bool, rule: str | None) -> None:
    decision = policy(rules=RULES).decide(who, "k8s-prod", request_info(method, path))
    assert decision.allowed is allowed
    assert decision.rules == ((rule,) if rule else ())


def test_deny_reason_carries_the_message() -> None:
    decision = policy(rules=RULES).decide(
        ALICE, "k8s-a", request_info("DELETE", "/api/v1/namespaces/prod/pods/a")
    )
    assert decision.reason == "needs a ticket (rule 'no-prod-delete')"


def test_rules_for_other_connections_do_not_apply() -> None:
    decision = policy(rules=RULES).decide(
        ALICE, "dev-cluster", request_info("DELETE", "/api/v1/namespaces/prod/pods/a")
    )
    assert decision.allowed


def test_guarded_connections_deny_what_no_rule_allows_but_keep_discovery() -> None:
    p = policy(rules=RULES, guarded_connections=["k8s-prod"])
    assert not p.decide(ALICE, "k8s-prod", request_info("GET", "/api/v1/pods")).allowed
    assert p.decide(ALICE, "k8s-prod", request_info("GET", "/apis")).allowed
    assert p.decide(
        OPS, "k8s-prod", request_info("GET", "/api/v1/namespaces/d/pods/a/exec")
    ).allowed


def test_masking_defaults_to_secrets_and_unions_env_globs() -> None:
    info = request_info("GET", "/api/v1/pods")
    assert policy().decide(ALICE, "c", info).mask_secrets
    p = policy(masking=[{"secrets": False, "env": ["*KEY*"], "match": {"groups": ["dev"]}},
                        {"secrets": False, "env": ["*PASSWORD*"]}])  # fmt: skip
    decision = p.decide(ALICE, "c", info)
    assert not decision.mask_secrets
    assert decision.mask_env == ("*KEY*", "*PASSWORD*")
    assert p.decide(OPS, "c", info).mask_env == ("*PASSWORD*",)


def test_config_key_and_validation() -> None:
    cfg = GatewayConfig.model_validate({"kubernetes": {"rules": RULES}})
    assert len(cfg.kube_policy().config.rules) == 4
    with pytest.raises(ValidationError):
        KubePolicyConfig.model_validate({"rules": [RULES[0], RULES[0]]})
    with pytest.raises(ValidationError):
        KubePolicyConfig.model_validate({"rules": [{"name": "x", "effect": "hold"}]})


REVIEW = {"approvers": {"groups": ["ops"]}}
REVIEW_RULES = [
    {"name": "exec-review", "effect": "review", "match": {"subresources": ["exec"]},
     "review": REVIEW},
    {"name": "prod-exec-waits", "effect": "review", "wait": True,
     "match": {"subresources": ["exec"], "namespaces": ["prod"]}, "review": REVIEW},
    {"name": "no-exec-for-machines", "effect": "deny",
     "match": {"identity": "machine", "subresources": ["exec"]}},
    {"name": "exec-allowed", "effect": "allow", "match": {"subresources": ["exec"]}},
]  # fmt: skip


def test_review_rules_hold_between_deny_and_allow() -> None:
    p = policy(rules=REVIEW_RULES, masking=[{"env": ["*KEY*"]}])
    exec_ = request_info("GET", "/api/v1/namespaces/dev/pods/a/exec", "command=ls")
    held = p.decide(ALICE, "c", exec_)
    assert (held.effect, held.rules, held.wait) == ("review", ("exec-review",), False)
    assert held.review is not None and held.review.approvers.groups == ("ops",)
    assert held.mask_env == ("*KEY*",)  # what runs once approved is masked as usual
    waits = p.decide(ALICE, "c", request_info("GET", "/api/v1/namespaces/prod/pods/a/exec"))
    assert waits.rules == ("exec-review", "prod-exec-waits") and not waits.wait  # the first
    assert p.decide(BOT, "c", exec_).effect == "deny"  # deny > review
    assert p.decide(ALICE, "c", request_info("GET", "/api/v1/pods")).effect == "allow"
    only_wait = policy(rules=REVIEW_RULES[1:])
    assert only_wait.decide(
        ALICE, "c", request_info("GET", "/api/v1/namespaces/prod/pods/a/exec")
    ).wait


@pytest.mark.parametrize(
    ("method", "path", "query", "text"),
    [
        ("GET", "/api/v1/namespaces/d/pods/web-1/exec",
         "command=sh&command=-c&command=exit+3&container=app&stdout=true",
         "exec pod/web-1 -n d -c app -- sh -c 'exit 3'"),
        ("GET", "/api/v1/namespaces/d/pods/web-1/attach", "container=app&stdin=true",
         "attach pod/web-1 -n d -c app"),
        ("POST", "/api/v1/namespaces/d/pods/web-1/portforward", "ports=8080",
         "port-forward pod/web-1 -n d 8080"),
        ("DELETE", "/api/v1/namespaces/prod/pods/api-1", "", "delete pods/api-1 -n prod"),
        ("DELETE", "/apis/apps/v1/namespaces/prod/deployments", "",
         "deletecollection deployments.apps -n prod"),
        ("GET", "/api/v1/namespaces/d/pods/web-1/log", "follow=true", "get pods/web-1/log -n d"),
        ("GET", "/version", "", "get /version"),
    ],
)  # fmt: skip
def test_review_text_names_the_request_like_kubectl(
    method: str, path: str, query: str, text: str
) -> None:
    assert review_text(request_info(method, path, query), query) == text


def test_review_rules_need_terms_and_wait_needs_review() -> None:
    with pytest.raises(ValidationError, match="review"):
        KubePolicyConfig.model_validate({"rules": [{"name": "x", "effect": "review"}]})
    with pytest.raises(ValidationError, match="review"):
        KubePolicyConfig.model_validate(
            {"rules": [{"name": "x", "effect": "deny", "review": REVIEW}]}
        )
    with pytest.raises(ValidationError, match="wait"):
        KubePolicyConfig.model_validate({"rules": [{"name": "x", "effect": "allow", "wait": True}]})
    with pytest.raises(ValidationError, match="approvers"):
        KubePolicyConfig.model_validate(
            {"rules": [{"name": "x", "effect": "review", "review": {"approvers": {}}}]}
        )
