"""Console sign-ins in the store (migration 0009): found by the cookie's hash only, idle
after their timeout, revoked for good, pruned when long dead."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.crypto import hash_token
from gateway.store import Store
from tests.gateway.test_store import T0, Clock


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> Iterator[Store]:
    with Store.open(f"sqlite:///{tmp_path / 'wardgate.db'}", clock=clock) as opened:
        opened.identity.ensure_user("bob", groups=("dba",))
        yield opened


def login(store: Store) -> str:
    return store.identity.create_login(
        "bob", method="local", expires_at=T0 + dt.timedelta(hours=12)
    ).id


def test_a_session_is_found_by_its_cookies_hash_with_its_user_and_sign_in(store: Store) -> None:
    login_id = login(store)
    made = store.console.create(hash_token("cookie-1"), "bob", login_id, idle_timeout=1800)
    found = store.console.find(hash_token("cookie-1"))
    assert found is not None
    session, user, signed_in = found
    assert (session.id, session.user, session.login_id) == (made.id, "bob", login_id)
    assert user.groups == ("dba",)
    assert signed_in is not None and signed_in.id == login_id
    assert store.console.find(hash_token("cookie-2")) is None
    assert made.id != "cookie-1"  # the public id is not the secret


def test_a_session_unused_for_its_idle_timeout_opens_nothing_until_touched(
    store: Store, clock: Clock
) -> None:
    made = store.console.create(hash_token("c"), "bob", login(store), idle_timeout=1800)
    assert made.valid_at(clock.advance(1799))
    store.console.touch(made.id)
    found = store.console.find(hash_token("c"))
    assert found is not None and found[0].valid_at(clock.advance(1799))
    assert not found[0].valid_at(clock.advance(1))


def test_a_revoked_session_stays_revoked_and_long_dead_ones_are_pruned(
    store: Store, clock: Clock
) -> None:
    made = store.console.create(hash_token("c"), "bob", login(store), idle_timeout=1800)
    store.console.revoke(made.id)
    found = store.console.find(hash_token("c"))
    assert found is not None and not found[0].valid_at(clock())
    store.console.touch(made.id)  # a touch does not bring it back
    found = store.console.find(hash_token("c"))
    assert found is not None and found[0].revoked_at is not None
    assert store.console.prune(clock.advance(10)) == 1
    assert store.console.find(hash_token("c")) is None
