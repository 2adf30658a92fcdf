"""Kubernetes guardrails: allow/deny rules over who, which connection, and what API request.

Pure and sans-I/O, like `gateway.policy.rules`: the gateway config's `kubernetes:` key, a
`Subject`, a connection name and the `RequestInfo` of one API request in, one `KubeDecision`
out. The rules it keeps:

1. A rule *applies* when every identity and connection condition it has matches (`users`,
   `connections`, `names`... are globs; `groups` and `roles` any-of; `identity` person or
   machine). An absent condition matches everyone and everything.
2. A rule *matches* a request when every request condition it has matches: `verbs`,
   `resources`, `subresources`, `namespaces`, `names`, `api_groups` (globs, any-of). A
   request condition never matches a non-resource request (discovery, /version), except
   `verbs`.
3. Deny wins, then review, then allow; with none, the request passes unless the
   connection is guarded (`guarded_connections`), where what no rule allows is denied.
   Discovery and /version always pass on a guarded connection: kubectl cannot work without
   them and they reveal no object.
4. A `review` rule holds the request for approval by others (its `review:` terms, as
   PostgreSQL rules have, `gateway.policy.approval`). By default the client is answered at
   once (a Status 403 naming the review) and, once approved, the same user's identical
   request (`review_text`) passes while the approval is valid; with `wait: true` the
   gateway holds the request until the review is decided.
5. Masking is decided per request as the union of the `masking` entries that apply:
   Secret `data` values (`secrets: true`, the default for everyone) and environment
   variables whose names match `env` globs. The agent applies it (shared/kubeapi.Masker).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Literal
from urllib.parse import parse_qs

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway.policy.approval import ReviewTerms
from gateway.policy.who import Subject, WhoMatch
from gateway.policy.who import glob as _glob
from shared.kubeapi import RequestInfo


class KubeMatch(WhoMatch):
    verbs: list[str] = Field(default_factory=list)  # RBAC's: get list watch create ...
    resources: list[str] = Field(default_factory=list)  # pods, secrets, ... (globs)
    subresources: list[str] = Field(default_factory=list)  # exec attach portforward log
    namespaces: list[str] = Field(default_factory=list)  # globs
    names: list[str] = Field(default_factory=list)  # object names (globs)
    api_groups: list[str] = Field(default_factory=list)  # API groups (globs)


class KubeRule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    effect: Literal["allow", "deny", "review"]  # deny wins, then review, then allow
    message: str = ""  # what the client is told on a denial
    match: KubeMatch = Field(default_factory=KubeMatch)  # absent conditions match everything
    review: ReviewTerms | None = None  # effect review: who approves, how many, how long
    # effect review: hold the request until decided, instead of answering 403 at once
    wait: bool = False

    @model_validator(mode="after")
    def _review_terms(self) -> KubeRule:
        if (self.effect == "review") != (self.review is not None):
            raise ValueError(
                f"rule {self.name!r}: a `review:` block goes with `effect: review`, and only there"
            )
        if self.wait and self.effect != "review":
            raise ValueError(f"rule {self.name!r}: `wait` goes with `effect: review` only")
        return self

    def explanation(self) -> str:
        if self.message:
            return f"{self.message} (rule {self.name!r})"
        return f"{self.effect} by rule {self.name!r}"


class KubeMasking(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    secrets: bool = True  # Secret data and stringData values
    env: list[str] = Field(default_factory=list)  # env variables whose values are masked (globs)
    match: KubeMatch = Field(default_factory=KubeMatch)  # who and where it applies


class KubePolicyConfig(BaseModel):
    """The `kubernetes:` key of the gateway config."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    rules: list[KubeRule] = Field(default_factory=list)
    # On these connections (globs) what no rule allows is denied (discovery always passes).
    guarded_connections: list[str] = Field(default_factory=list)
    masking: list[KubeMasking] = Field(default_factory=lambda: [KubeMasking()])  # by the agent

    @model_validator(mode="after")
    def _unique(self) -> KubePolicyConfig:
        names = [r.name for r in self.rules]
        if len(names) != len(set(names)):
            raise ValueError("kubernetes rule names must be unique")
        return self


@dataclass(frozen=True, slots=True)
class KubeDecision:
    effect: Literal["allow", "deny", "review"]
    reason: str
    rules: tuple[str, ...] = ()
    mask_secrets: bool = False
    mask_env: tuple[str, ...] = ()
    review: ReviewTerms | None = None  # effect review: the terms of the first review rule
    wait: bool = False  # effect review: hold the request until decided

    @property
    def allowed(self) -> bool:
        return self.effect == "allow"


def _matches(m: KubeMatch, info: RequestInfo) -> bool:
    if m.verbs and not _glob(info.verb, m.verbs):
        return False
    conditions = (
        (m.resources, info.resource),
        (m.subresources, info.subresource),
        (m.namespaces, info.namespace),
        (m.names, info.name),
        (m.api_groups, info.api_group),
    )
    for patterns, value in conditions:
        if patterns and (not info.is_resource or not _glob(value, patterns)):
            return False
    return True


class KubePolicy:
    def __init__(self, config: KubePolicyConfig | None = None) -> None:
        self.config = config or KubePolicyConfig()

    def decide(self, subject: Subject, connection: str, info: RequestInfo) -> KubeDecision:
        masking = [m for m in self.config.masking if m.match.applies(subject, connection)]
        mask_secrets = any(m.secrets for m in masking)
        mask_env = tuple(sorted({g for m in masking for g in m.env}))
        applicable = [r for r in self.config.rules if r.match.applies(subject, connection)]
        for rule in applicable:
            if rule.effect == "deny" and _matches(rule.match, info):
                return KubeDecision("deny", rule.explanation(), (rule.name,))
        held = [r for r in applicable if r.effect == "review" and _matches(r.match, info)]
        if held:
            first = held[0]
            return KubeDecision(
                "review",
                first.explanation(),
                tuple(r.name for r in held),
                mask_secrets,
                mask_env,
                review=first.review,
                wait=first.wait,
            )
        for rule in applicable:
            if rule.effect == "allow" and _matches(rule.match, info):
                return KubeDecision(
                    "allow", rule.explanation(), (rule.name,), mask_secrets, mask_env
                )
        if _glob(connection, self.config.guarded_connections) and info.is_resource:
            return KubeDecision(
                "deny", f"connection {connection!r} is guarded and no rule allows {info.verb}"
            )
        return KubeDecision("allow", "no rule applies", (), mask_secrets, mask_env)


def review_text(info: RequestInfo, query: str) -> str:
    """What a review shows and what an approval is for, like the kubectl command line:
    `exec pod/web-1 -n default -- sh -c 'exit 3'`, `delete pods/api-1 -n prod`.

    Two requests with the same text are the same request for an approval: it names the
    verb, resource, subresource, API group, namespace and name, and what an exec runs.
    """
    if not info.is_resource:
        return f"{info.verb} {info.path}"
    params = parse_qs(query)
    where = f" -n {info.namespace}" if info.namespace else ""
    container = "".join(f" -c {shlex.quote(c)}" for c in params.get("container", [])[-1:])
    if info.resource == "pods" and info.subresource in ("exec", "attach"):
        text = f"{info.subresource} pod/{info.name}{where}{container}"
        if info.subresource == "exec":
            text += " -- " + shlex.join(params.get("command", []))
        return text
    if info.resource == "pods" and info.subresource == "portforward":
        ports = " ".join(params.get("ports", []))
        return f"port-forward pod/{info.name}{where} {ports}".rstrip()
    what = info.resource + (f".{info.api_group}" if info.api_group else "")
    what += f"/{info.name}" if info.name else ""
    what += f"/{info.subresource}" if info.subresource else ""
    return f"{info.verb} {what}{where}"
