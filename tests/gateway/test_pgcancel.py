"""Cancel keys: the server's pid, a secret of the gateway's own, unique as a pair."""

from __future__ import annotations

import secrets

import pytest

from gateway.protocols.pgcancel import (
    SECRET_3_0,
    SECRET_3_2,
    BadMessage,
    CancelAnswer,
    CancelKeys,
    FleetCancel,
    secret_digest,
    secret_length,
)


@pytest.mark.parametrize(("minor", "length"), [(0, 4), (1, 4), (2, 32), (7, 32)])
def test_the_secret_is_as_long_as_the_protocol_allows(minor: int, length: int) -> None:
    assert secret_length(minor) == length
    assert len(CancelKeys[str]().issue("s", 42, secret_length(minor))) == length


def test_a_key_finds_its_session_and_nothing_else() -> None:
    keys = CancelKeys[str]()
    secret = keys.issue("alice's", 4242, SECRET_3_0)
    assert keys.find(4242, secret) == "alice's"
    assert keys.find(4243, secret) is None  # another pid
    wrong = bytes([secret[0] ^ 1]) + secret[1:]
    assert keys.find(4242, wrong) is None  # one bit off
    assert keys.find(4242, secret + b"\0" * 28) is None  # a longer key with the same start


def test_two_servers_may_give_the_same_pid() -> None:
    keys = CancelKeys[str]()
    # pids come from different servers behind different agents: only the secret tells apart
    first = keys.issue("on server A", 100, SECRET_3_0)
    second = keys.issue("on server B", 100, SECRET_3_2)
    assert first != second
    assert keys.find(100, first) == "on server A"
    assert keys.find(100, second) == "on server B"
    keys.revoke(100, first)
    assert keys.find(100, first) is None
    assert keys.find(100, second) == "on server B"
    keys.revoke(100, second)
    assert len(keys) == 0


def test_a_secret_already_paired_with_the_pid_is_drawn_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    draws = iter([b"same", b"same", b"same", b"diff"])
    monkeypatch.setattr(secrets, "token_bytes", lambda n: next(draws))
    keys = CancelKeys[str]()
    assert keys.issue("first", 7, SECRET_3_0) == b"same"
    assert keys.issue("on another pid", 8, SECRET_3_0) == b"same"  # another pair: allowed
    assert keys.issue("second", 7, SECRET_3_0) == b"diff"  # two draws clashed with "first"
    assert (keys.find(7, b"same"), keys.find(7, b"diff")) == ("first", "second")


def test_revoking_an_unknown_key_is_harmless() -> None:
    keys = CancelKeys[str]()
    keys.revoke(1, b"abcd")
    secret = keys.issue("s", 1, SECRET_3_0)
    keys.revoke(1, b"zzzz")
    assert keys.find(1, secret) == "s"


# ---- across members: the key travels as a digest ------------------------------------


def test_a_digest_finds_the_session_its_secret_does() -> None:
    keys = CancelKeys[str]()
    secret = keys.issue("alice's", 4242, SECRET_3_2)
    assert keys.find_digest(4242, secret_digest(secret)) == "alice's"
    assert keys.find_digest(4243, secret_digest(secret)) is None
    assert keys.find_digest(4242, secret_digest(secret[:-1])) is None
    assert keys.find_digest(4242, secret) is None  # the secret itself is no digest


def test_a_fleet_cancel_carries_a_digest_never_the_secret() -> None:
    secret = secrets.token_bytes(SECRET_3_0)
    message = FleetCancel("r1", 4242, secret_digest(secret), "10.0.0.7:5000")
    payload = message.encode()
    assert secret.hex() not in payload
    assert FleetCancel.decode(payload) == message
    answer = CancelAnswer("r1", "done")
    assert CancelAnswer.decode(answer.encode()) == answer


@pytest.mark.parametrize(
    "payload",
    [
        "",
        "null",
        "[]",
        '{"id": "r", "pid": 1, "key": "zz", "client": "c"}',
        '{"id": "r", "pid": 1, "key": "00", "client": "c"}',  # not a SHA-256
        '{"id": "r", "pid": "x", "key": "' + "00" * 32 + '", "client": "c"}',
        '{"id": "r", "key": "' + "00" * 32 + '", "client": "c"}',
    ],
)
def test_a_message_that_is_not_a_fleet_cancel_is_refused(payload: str) -> None:
    with pytest.raises(BadMessage):
        FleetCancel.decode(payload)


@pytest.mark.parametrize("payload", ["{}", '{"id": "r", "state": "maybe"}', "1", "{"])
def test_an_answer_that_is_not_claimed_or_done_is_refused(payload: str) -> None:
    with pytest.raises(BadMessage):
        CancelAnswer.decode(payload)
