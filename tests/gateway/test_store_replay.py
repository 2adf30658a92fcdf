"""Single-use workload tokens in the store (migration 0006), on SQLite and on PostgreSQL."""

from __future__ import annotations

import datetime as dt
import threading

import pytest
import sqlalchemy as sa

from gateway.store import Store
from gateway.store import tables as t
from tests.gateway import test_store as base
from tests.gateway.test_store import T0, Clock, digest

store_url = base.store_url
store = base.store
clock = base.clock

MINUTE = dt.timedelta(minutes=1)


def rows(store: Store) -> int:
    with store.engine.connect() as conn:
        return int(
            conn.execute(sa.select(sa.func.count()).select_from(t.token_replay)).scalar_one()
        )


def test_a_token_is_used_once_until_it_expires(store: Store, clock: Clock) -> None:
    key = digest("issuer\njti-1")
    assert store.identity.use_token_once(key, trust="ci", expires_at=T0 + 5 * MINUTE)
    assert not store.identity.use_token_once(key, trust="ci", expires_at=T0 + 5 * MINUTE)
    assert not store.identity.use_token_once(key, trust="other", expires_at=T0 + 9 * MINUTE)
    clock.advance(5 * 60 - 1)
    assert not store.identity.use_token_once(key, trust="ci", expires_at=T0 + 5 * MINUTE)
    other = digest("issuer\njti-2")
    assert store.identity.use_token_once(other, trust="ci", expires_at=T0 + 10 * MINUTE)
    clock.advance(2)  # past the first token's expiry: its row goes at the next use
    assert store.identity.use_token_once(
        digest("issuer\njti-3"), trust="ci", expires_at=T0 + MINUTE * 9
    )
    assert rows(store) == 2
    assert not store.identity.use_token_once(other, trust="ci", expires_at=T0 + 10 * MINUTE)


def test_a_failed_exchange_forgets_the_use(store: Store) -> None:
    key = digest("issuer\njti-f")
    assert store.identity.use_token_once(key, trust="ci", expires_at=T0 + MINUTE)
    store.identity.forget_token_use(key)
    assert store.identity.use_token_once(key, trust="ci", expires_at=T0 + MINUTE)
    store.identity.forget_token_use(digest("never used"))  # nothing to forget: no error


def test_the_store_refuses_raw_tokens_and_naive_times(store: Store) -> None:
    with pytest.raises(ValueError, match="digest"):
        store.identity.use_token_once(b"jti-raw", trust="ci", expires_at=T0)
    with pytest.raises(ValueError, match="timezone-aware"):
        store.identity.use_token_once(digest("x"), trust="ci", expires_at=dt.datetime(2030, 1, 1))


def test_concurrent_uses_of_one_token_let_exactly_one_through(store_url: str) -> None:
    """Gateways are separate processes; separate Store objects (engines, pools) stand in."""
    stores = [Store.open(store_url) for _ in range(4)]
    key = digest("issuer\njti-race")
    results: list[bool] = []
    lock = threading.Lock()
    start = threading.Barrier(len(stores) * 2)

    def use(s: Store) -> None:
        start.wait()
        ok = s.identity.use_token_once(
            key, trust="ci", expires_at=dt.datetime.now(dt.UTC) + 10 * MINUTE
        )
        with lock:
            results.append(ok)

    threads = [threading.Thread(target=use, args=(s,)) for s in stores for _ in range(2)]
    try:
        for th in threads:
            th.start()
        for th in threads:
            th.join(timeout=30)
    finally:
        for s in stores:
            s.close()
    assert sorted(results) == [False] * 7 + [True]


def test_a_token_valid_until_year_9999_is_remembered(store: Store) -> None:
    last = dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=dt.UTC)
    key = digest("issuer\nforever")
    assert store.identity.use_token_once(key, trust="ci", expires_at=last)
    assert not store.identity.use_token_once(key, trust="ci", expires_at=last)


def test_a_dpop_key_binds_once_and_a_service_account_keeps_its_requirement(store: Store) -> None:
    made = store.identity.ensure_machine("bot", kind="service", groups=(), dpop=True)
    assert made.dpop
    # Saving the account again without the flag leaves DPoP on.
    assert store.identity.ensure_machine("bot", kind="service", groups=("g",), dpop=False).dpop
    record = store.identity.add_token("bot", digest("k"), kind="api_key", scopes=("pg",))
    assert record.jkt is None
    assert store.identity.bind_token_key(record.id, "first-key") == "first-key"
    # A second first use (another member, another key) finds the first binding.
    assert store.identity.bind_token_key(record.id, "second-key") == "first-key"
    found = store.identity.find_credential(digest("k"))
    assert found is not None
    assert (found[0].jkt, found[1].dpop) == ("first-key", True)
    assert store.identity.bind_token_key("no-such-token", "k") is None
