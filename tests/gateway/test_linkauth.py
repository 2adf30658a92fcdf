"""The member link's proof (gateway/fleet/linkauth.py), without sockets."""

from __future__ import annotations

import pytest

from gateway.fleet.linkauth import (
    MAX_SKEW,
    METADATA_MEMBER,
    METADATA_PROOF,
    METADATA_TIME,
    LinkKey,
    LinkRefused,
    ReplayGuard,
)

KEY = LinkKey(b"k" * 32)
NOW = 1_800_000_000.0


def proof(
    caller: str = "a", callee: str = "b", session: str = "s1", at: float = NOW
) -> dict[str, str]:
    return dict(KEY.metadata(caller, callee, session, now=at))


def test_a_members_proof_names_the_caller() -> None:
    assert KEY.verify(proof(), "b", "s1", now=NOW) == "a"


@pytest.mark.parametrize(
    ("metadata", "callee", "session", "why"),
    [
        (proof(), "c", "s1", "does not match"),  # made for another member
        (proof(), "b", "s2", "does not match"),  # made for another session
        ({**proof(), METADATA_MEMBER: "z"}, "b", "s1", "does not match"),  # caller swapped
        (dict(LinkKey(b"o" * 32).metadata("a", "b", "s1", now=NOW)), "b", "s1", "does not match"),
        (proof(at=NOW - MAX_SKEW - 5), "b", "s1", "off this member's clock"),
        (proof(at=NOW + MAX_SKEW + 5), "b", "s1", "off this member's clock"),
        ({**proof(), METADATA_TIME: "soon"}, "b", "s1", "malformed"),
        ({METADATA_MEMBER: "a"}, "b", "s1", "no member proof"),
        ({}, "b", "s1", "no member proof"),
    ],
)
def test_anything_else_is_refused_saying_why(
    metadata: dict[str, str], callee: str, session: str, why: str
) -> None:
    with pytest.raises(LinkRefused, match=why):
        KEY.verify(metadata, callee, session, now=NOW)


def test_a_proof_opens_once_within_the_window_and_is_forgotten_after() -> None:
    guard = ReplayGuard()
    token = proof()[METADATA_PROOF]
    assert guard.first_use(token, now=NOW)
    assert not guard.first_use(token, now=NOW + 1)
    # Past twice the skew its time alone refuses it, so it need not be remembered.
    assert guard.first_use(token, now=NOW + 2 * MAX_SKEW + 1)


def test_a_full_replay_memory_refuses_rather_than_forgets() -> None:
    guard = ReplayGuard(limit=2)
    assert guard.first_use("p1", now=NOW)
    assert guard.first_use("p2", now=NOW)
    assert not guard.first_use("p3", now=NOW + 1)  # fail closed
    assert guard.first_use("p3", now=NOW + 2 * MAX_SKEW + 1)  # the old ones aged out
