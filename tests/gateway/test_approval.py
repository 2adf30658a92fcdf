"""The pure parts of approvals: who may vote, what votes decide, review rules, on-request
grants, webhook signatures and CLI durations."""

from __future__ import annotations

import datetime as dt
from typing import Any

import click
import pytest
from pydantic import ValidationError

from cli.reviews import parse_duration
from gateway.config import GatewayConfig
from gateway.policy.approval import ReviewTerms, Vote, Voter, controllers, may_vote, tally
from gateway.policy.grants import AccessPolicy, Grant, Role
from gateway.policy.rules import Policy, PolicyConfig, Subject
from gateway.reviews.webhook import sign, verify

T0 = dt.datetime(2026, 11, 26, 12, 0, tzinfo=dt.UTC)
TERMS = ReviewTerms.model_validate({"approvers": {"groups": ["dba"], "users": ["root"]}})
TWO = TERMS.model_copy(update={"required": 2})
ALICE = controllers("alice", ())
BOT = controllers("alice-bot", ("alice",))


def voter(user: str, *groups: str, owners: tuple[str, ...] = ()) -> Voter:
    return Voter(user, groups, controllers(user, owners))


def vote(user: str, kind: str = "approve", *, at: dt.datetime = T0, ttl: int = 3600) -> Vote:
    return Vote(
        user,
        controllers(user, ()),
        "approve" if kind == "approve" else "deny",
        at,
        at + dt.timedelta(seconds=ttl),
    )


# ---- segregation of duties --------------------------------------------------------------


def test_nobody_votes_on_their_own_request() -> None:
    why = may_vote(TERMS, ALICE, voter("alice", "dba"), [])
    assert why == "nobody reviews their own request"


def test_nor_through_an_identity_they_control_either_way() -> None:
    # alice's bot on alice's request
    why = may_vote(TERMS, ALICE, voter("alice-bot", "dba", owners=("alice",)), [])
    assert why is not None and "same person (alice)" in why
    # alice on her bot's request: hers, as she answers for it
    why = may_vote(TERMS, BOT, voter("alice", "dba"), [])
    assert why == "nobody reviews their own request"
    # two bots of one owner
    why = may_vote(TERMS, BOT, voter("alice-ci", "dba", owners=("alice",)), [])
    assert why is not None and "same person" in why


def test_approvers_must_match_the_terms() -> None:
    assert may_vote(TERMS, ALICE, voter("bob", "dba"), []) is None
    assert may_vote(TERMS, ALICE, voter("root"), []) is None
    why = may_vote(TERMS, ALICE, voter("dave", "dev"), [])
    assert why == "'dave' may not review this request (approvers: group dba, user root)"


def test_a_second_vote_of_the_same_party_is_refused() -> None:
    votes = [vote("bob")]
    assert "already voted" in (may_vote(TERMS, ALICE, voter("bob", "dba"), votes) or "")
    bobs_bot = voter("bob-bot", "dba", owners=("bob",))
    assert "already voted on this review (as 'bob')" in (
        may_vote(TERMS, ALICE, bobs_bot, votes) or ""
    )


# ---- tally -------------------------------------------------------------------------------


def test_one_approval_decides_a_one_approver_review() -> None:
    assert tally(TERMS, [], T0).outcome == "pending"
    t = tally(TERMS, [vote("bob")], T0)
    assert t.outcome == "approved" and t.reason == "approved by 'bob'"


def test_one_denial_ends_it_whatever_the_approvals() -> None:
    t = tally(TWO, [vote("bob"), vote("carol", "deny")], T0)
    assert t.outcome == "denied" and t.reason == "denied by 'carol'"


def test_two_distinct_approvals_within_their_lifetime() -> None:
    assert tally(TWO, [vote("bob")], T0).outcome == "pending"
    assert tally(TWO, [vote("bob"), vote("carol")], T0).outcome == "approved"
    # bob's approval expired before carol's arrived: one live approval only.
    later = T0 + dt.timedelta(hours=2)
    t = tally(TWO, [vote("bob"), vote("carol", at=later)], later)
    assert t.outcome == "pending" and t.approvals == 1


def test_terms_need_approvers() -> None:
    with pytest.raises(ValidationError, match="needs approvers"):
        ReviewTerms.model_validate({"required": 1})
    with pytest.raises(ValidationError):
        ReviewTerms.model_validate({"approvers": {"groups": ["dba"]}, "required": 0})


# ---- review rules ------------------------------------------------------------------------

SUBJECT = Subject(user="alice", groups=("dev",))
REVIEW_WRITES = {
    "name": "review-writes",
    "effect": "review",
    "message": "writes need a second person",
    "match": {"kinds": ["write"], "tables": ["accounts"]},
    "review": {"approvers": {"groups": ["dba"]}, "timeout": 60},
}
DENY_DELETE = {
    "name": "no-delete",
    "effect": "deny",
    "match": {"kinds": ["write"], "tables": ["accounts"], "flags": ["where_less_write"]},
}
ALLOW_ALL = {"name": "allow-all", "effect": "allow", "match": {"kinds": ["read", "write"]}}


def policy(*rules: dict[str, Any], guarded: tuple[str, ...] = ()) -> Policy:
    return Policy(
        PolicyConfig.model_validate({"rules": list(rules), "guarded_connections": list(guarded)})
    )


def test_deny_wins_over_review_and_review_over_allow() -> None:
    p = policy(ALLOW_ALL, REVIEW_WRITES, DENY_DELETE)
    held = p.evaluate(SUBJECT, "pg", "update accounts set balance = 0 where id = 1")
    assert held.effect == "review" and held.rules == ("review-writes",)
    assert held.reason == "writes need a second person (rule 'review-writes')"
    assert held.review is not None and held.review.timeout == 60
    denied = p.evaluate(SUBJECT, "pg", "delete from accounts")
    assert denied.effect == "deny" and denied.rules == ("no-delete",)
    assert p.evaluate(SUBJECT, "pg", "select * from accounts").effect == "allow"


def test_a_query_string_waits_whole_and_names_its_statement() -> None:
    p = policy(REVIEW_WRITES)
    d = p.evaluate(SUBJECT, "pg", "select 1; update accounts set balance = 1 where id = 2")
    assert d.effect == "review" and d.reason.startswith("statement 2 of 2: ")
    assert p.evaluate(SUBJECT, "pg", "select 1; delete from accounts").effect == "review"
    deny_too = policy(REVIEW_WRITES, DENY_DELETE)
    assert deny_too.evaluate(
        SUBJECT, "pg", "update accounts set balance = 1 where id = 2; delete from accounts"
    ).effect == ("deny")


def test_review_rules_assume_the_worst_of_what_they_cannot_read() -> None:
    p = policy(REVIEW_WRITES)
    assert p.evaluate(SUBJECT, "pg", "do $$ begin perform 1; end $$").effect == "review"
    assert p.evaluate(SUBJECT, "pg", "selec broken").effect == "deny"
    assert p.for_session(SUBJECT, "pg") is not None  # review rules make sessions checked


def test_review_on_a_guarded_connection_beats_the_default_deny() -> None:
    p = policy(REVIEW_WRITES, guarded=("pg",))
    assert p.evaluate(SUBJECT, "pg", "update accounts set balance = 1 where id = 1").effect == (
        "review"
    )
    assert p.evaluate(SUBJECT, "pg", "select 1").effect == "deny"


def test_a_review_rule_refuses_sessions_whose_statements_cannot_be_read() -> None:
    blanket = {**REVIEW_WRITES, "match": {}}
    assert policy(blanket).unenforceable(SUBJECT, "tcp-db") is not None


def test_review_terms_go_with_the_review_effect_only() -> None:
    with pytest.raises(ValidationError, match="goes with `effect: review`"):
        policy({**REVIEW_WRITES, "review": None})
    with pytest.raises(ValidationError, match="goes with `effect: review`"):
        policy({**ALLOW_ALL, "review": {"approvers": {"users": ["x"]}}})


# ---- on-request grants -------------------------------------------------------------------


def test_an_on_request_grant_holds_only_with_an_approved_request() -> None:
    access = AccessPolicy(
        [
            Role(
                "devs",
                groups=frozenset({"dev"}),
                grants=(
                    Grant("pg-main", "read-only"),
                    Grant("pg-prod", "read-write", request=TERMS),
                    Grant("pg-*", "read-only", request=TERMS),
                ),
            )
        ]
    )
    assert access.on_request
    none = access.decide(user="alice", groups=["dev"], is_admin=False, connection="pg-prod")
    assert none.access is None
    some = access.decide(
        user="alice", groups=["dev"], is_admin=False, connection="pg-prod", requested={"pg-prod"}
    )
    assert some.access == "read-write" and "approved access request" in some.reason
    assert access.requestable("alice", ["dev"], "pg-prod") == ("read-write", TERMS)
    assert access.requestable("alice", ["dev"], "mysql") is None
    assert access.requestable("bob", ["ops"], "pg-prod") is None
    assert not AccessPolicy([Role("r", grants=(Grant("*", "admin"),))]).on_request


def test_the_config_reads_request_terms_on_grants() -> None:
    cfg = GatewayConfig.model_validate(
        {
            "roles": [
                {
                    "name": "devs",
                    "groups": ["dev"],
                    "grants": [
                        {
                            "connection": "pg-prod",
                            "access": "read-write",
                            "request": {"approvers": {"groups": ["dba"]}, "max_duration": 7200},
                        }
                    ],
                }
            ],
            "reviews": {"webhook": {"url": "https://chat.example/hook", "secret": "env:HOOK"}},
        }
    )
    grant = cfg.access_policy().roles[0].grants[0]
    assert grant.request is not None and grant.request.max_duration == 7200


# ---- webhook signatures and durations ----------------------------------------------------


def test_webhook_signature_round_trip_and_tampering() -> None:
    body = b'{"event":"review.created"}'
    header = sign("s3cret", body, 1_700_000_000)
    assert header.startswith("t=1700000000,v1=")
    assert verify("s3cret", body, header, now=1_700_000_010)
    assert not verify("s3cret", body + b" ", header, now=1_700_000_010)
    assert not verify("other", body, header, now=1_700_000_010)
    assert not verify("s3cret", body, header, now=1_700_000_000 + 3600)  # replayed late
    assert not verify("s3cret", body, "v1=abc", now=1_700_000_000)
    assert not verify("s3cret", body, "garbage", now=1_700_000_000)


@pytest.mark.parametrize(
    ("text", "seconds"), [("2h", 7200), ("30m", 1800), ("1h30m", 5400), ("45", 45), ("1d", 86400)]
)
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "2x", "h", "1h 30m", "-1h"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(click.BadParameter):
        parse_duration(text)
