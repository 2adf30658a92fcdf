"""Approvals with segregation of duties: who may vote on a review, and what the votes decide.

Pure and sans-I/O: the review service (`gateway.reviews`) reads the review, its votes and
the owners of the identities involved from the store, and asks here. The rules it keeps:

1. *Terms* come from the rule (statement reviews, `effect: review`) or the grant (access
   requests, `request:`) that asked for the review: which groups and users may approve,
   how many distinct approvers are needed, how long the requester waits (`timeout`), and
   how long one approval stays valid (`approval_ttl`).
2. Nobody approves (or denies) their own request, also not through another identity they
   control: the *controllers* of an identity are itself and its owners (a service account
   is owned by the people who answer for it). A voter whose controllers meet the
   requester's is refused. So a person cannot vote on their service account's request,
   nor with their service account on their own.
3. A voter must match the terms: their user name is in `approvers.users`, or one of their
   groups is in `approvers.groups`. Terms must name approvers (the config is refused
   otherwise), so no review waits for a vote nobody may cast.
4. Approvers are distinct by controller: two identities with a common controller count
   once (a second vote through your own service account is refused).
5. One denial ends the review. Approvals expire `approval_ttl` seconds after they were
   given; the review is approved when at least `required` unexpired distinct approvals
   are held at once.
6. A review undecided at its deadline expires (the service marks it).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

DEFAULT_TIMEOUT = 300  # seconds a held statement waits for its review
DEFAULT_APPROVAL_TTL = 3600  # seconds an approval vote stays valid


class Approvers(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    groups: tuple[str, ...] = ()  # members of these groups may vote...
    users: tuple[str, ...] = ()  # ...and these users


class ReviewTerms(BaseModel):
    """The `review:` block of a rule, or the `request:` block of a grant."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    approvers: Approvers = Field(default_factory=Approvers)  # who may vote (required)
    required: int = Field(default=1, ge=1, le=10)  # distinct approvers
    timeout: int = Field(default=DEFAULT_TIMEOUT, gt=0)  # seconds the requester waits
    approval_ttl: int = Field(default=DEFAULT_APPROVAL_TTL, gt=0)  # seconds a vote is valid
    max_duration: int = Field(default=8 * 3600, gt=0)  # access requests: longest grant

    @model_validator(mode="after")
    def _someone(self) -> ReviewTerms:
        if not self.approvers.groups and not self.approvers.users:
            raise ValueError("a review needs approvers (groups and/or users)")
        return self


@dataclass(frozen=True, slots=True)
class Voter:
    """Who is voting: their name, groups and controllers (themselves and their owners)."""

    user: str
    groups: tuple[str, ...]
    controllers: frozenset[str]


@dataclass(frozen=True, slots=True)
class Vote:
    voter: str
    controllers: frozenset[str]
    vote: Literal["approve", "deny"]
    voted_at: dt.datetime
    expires_at: dt.datetime  # approvals only matter until then


def controllers(identity: str, owners: Iterable[str]) -> frozenset[str]:
    return frozenset((identity, *owners))


def may_vote(
    terms: ReviewTerms, requester: frozenset[str], voter: Voter, votes: Sequence[Vote]
) -> str | None:
    """Why `voter` may not vote on this review, or None when they may."""
    if voter.controllers & requester:
        if voter.user in requester:
            return "nobody reviews their own request"
        shared = ", ".join(sorted(voter.controllers & requester))
        return (
            f"{voter.user!r} and the requester answer to the same person ({shared}): "
            "nobody reviews their own request"
        )
    approvers = terms.approvers
    if voter.user not in approvers.users and not set(voter.groups) & set(approvers.groups):
        allowed = [f"group {g}" for g in approvers.groups] + [f"user {u}" for u in approvers.users]
        return f"{voter.user!r} may not review this request (approvers: {', '.join(allowed)})"
    for v in votes:
        if v.controllers & voter.controllers:
            return f"{voter.user!r} already voted on this review (as {v.voter!r})"
    return None


@dataclass(frozen=True, slots=True)
class Tally:
    outcome: Literal["pending", "approved", "denied"]
    approvals: int  # distinct, unexpired
    reason: str


def tally(terms: ReviewTerms, votes: Sequence[Vote], now: dt.datetime) -> Tally:
    for v in votes:
        if v.vote == "deny":
            return Tally("denied", 0, f"denied by {v.voter!r}")
    live = [v for v in votes if v.vote == "approve" and v.expires_at > now]
    seen: set[str] = set()
    distinct: list[str] = []
    for v in live:
        if not v.controllers & seen:
            distinct.append(v.voter)
            seen |= v.controllers
    if len(distinct) >= terms.required:
        return Tally("approved", len(distinct), f"approved by {', '.join(map(repr, distinct))}")
    return Tally("pending", len(distinct), f"{len(distinct)} of {terms.required} approvals")
