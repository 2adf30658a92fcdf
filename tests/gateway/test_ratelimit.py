"""Sign-in rate limits: the sliding-window arithmetic (pure), and the counters in the store,
on SQLite and on a real PostgreSQL (two Store objects over one database stand for two
gateway members)."""

from __future__ import annotations

import concurrent.futures
import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from gateway.config import GatewayConfig, RateRule
from gateway.ratelimit import (
    Charge,
    Key,
    Refusal,
    Rule,
    address_key,
    estimate,
    over,
    peer_host,
    retry_after,
    window_start,
)
from gateway.store import Store
from gateway.store.ratelimits import Charged
from tests.fixtures.postgres import PostgresServer

T0 = dt.datetime(2026, 12, 7, 15, 0, 0, tzinfo=dt.UTC)  # a window boundary for 60 s and 300 s
ADDRESS = Rule(attempts=5, window=60)
IDENTITY = Rule(attempts=3, window=300)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state' / 'wardgate.db'}"
    db: PostgresServer = request.getfixturevalue("postgres_db")
    return db.url()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(store_url: str, clock: Clock) -> Iterator[Store]:
    with Store.open(store_url, clock=clock) as opened:
        yield opened


def addr(host: str = "192.0.2.7") -> Charge:
    return Charge(Key.of("address", host), ADDRESS)


def ident(name: str = "local:lena") -> Charge:
    return Charge(Key.of("identity", name), IDENTITY)


# ---- the arithmetic ------------------------------------------------------------------


def test_the_previous_window_weighs_by_the_share_still_inside_the_sliding_one() -> None:
    assert estimate(10, 2, 0, 60) == 12
    assert estimate(10, 2, 30, 60) == 7
    assert estimate(10, 2, 60, 60) == 2
    assert not over(0, 5, 10, ADDRESS)
    assert over(0, 6, 10, ADDRESS)
    assert not over(4, 3, 30, ADDRESS)  # half of 4, and 3: five
    assert over(4, 4, 30, ADDRESS)  # six


@given(
    previous=st.integers(0, 500),
    current=st.integers(0, 500),
    elapsed=st.floats(0, 59.999),
    attempts=st.integers(1, 100),
)
def test_retry_after_is_when_one_more_attempt_passes(
    previous: int, current: int, elapsed: float, attempts: int
) -> None:
    rule = Rule(attempts, 60)
    wait = retry_after(previous, current, elapsed, rule)
    assert wait >= 1
    later = elapsed + wait
    if later < rule.window:  # still in this window: `current` stays, `previous` weighs less
        assert not over(previous, current + 1, later, rule)
    else:  # in the next: this window's count becomes the previous one
        assert not over(current, 1, later - rule.window, rule)
    if wait > 1:  # and not a whole second earlier
        sooner = elapsed + wait - 1
        if sooner < rule.window:
            assert over(previous, current + 1, sooner, rule)
        else:
            assert over(current, 1, sooner - rule.window, rule)


def test_windows_are_aligned_so_every_member_computes_the_same_one() -> None:
    assert window_start(T0 + dt.timedelta(seconds=59.9), 60) == T0
    assert window_start(T0 + dt.timedelta(seconds=60), 60) == T0 + dt.timedelta(seconds=60)


@pytest.mark.parametrize(
    ("host", "counted"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff::1", "2001:db8:1:2::/64"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("not-an-address", "not-an-address"),
    ],
)
def test_an_ipv6_client_is_counted_by_its_64(host: str, counted: str) -> None:
    assert address_key(host) == counted


@pytest.mark.parametrize(
    ("client", "host"),
    [("192.0.2.7:5432", "192.0.2.7"), ("[2001:db8::1]:22", "2001:db8::1"), ("-", "-")],
)
def test_the_host_of_a_client_string(client: str, host: str) -> None:
    assert peer_host(client) == host


def test_a_key_is_a_digest_and_its_label_is_bounded_and_printable() -> None:
    key = Key.of("identity", "local:" + "x\n" * 500)
    assert len(key.digest) == 64
    assert len(key.label) == 200 and "\n" not in key.label
    assert Key.of("address", "a") != Key.of("identity", "a")


# ---- the counters in the store --------------------------------------------------------


def test_the_attempt_over_the_limit_is_refused_with_the_wait(store: Store, clock: Clock) -> None:
    for _ in range(ADDRESS.attempts):
        assert isinstance(store.rate_limits.charge([addr()]), Charged)
    clock.advance(15)
    refused = store.rate_limits.charge([addr()])
    assert isinstance(refused, Refusal)
    assert refused.key == addr().key and refused.first
    # 5 attempts in the window: the next passes once the window has passed and the five,
    # now the previous window's, weigh at most 4: 45 s + 12 s.
    assert refused.retry_after == 57
    again = store.rate_limits.charge([addr()])
    assert isinstance(again, Refusal) and not again.first  # only the first is audited
    assert isinstance(store.rate_limits.charge([addr("192.0.2.8")]), Charged)  # other address
    clock.advance(refused.retry_after)
    assert isinstance(store.rate_limits.charge([addr()]), Charged)


def test_a_refused_attempt_is_charged_to_none_of_its_keys(store: Store, clock: Clock) -> None:
    for i in range(IDENTITY.attempts):
        assert isinstance(store.rate_limits.charge([addr(f"192.0.2.{i}"), ident()]), Charged)
    refused = store.rate_limits.charge([addr("192.0.2.99"), ident()])
    assert isinstance(refused, Refusal) and refused.key.kind == "identity"
    # The address that tried was not charged: it still has its whole allowance.
    for _ in range(ADDRESS.attempts):
        assert isinstance(store.rate_limits.charge([addr("192.0.2.99")]), Charged)
    assert isinstance(store.rate_limits.charge([addr("192.0.2.99")]), Refusal)


def test_a_success_refunds_its_address_and_clears_its_identity(store: Store, clock: Clock) -> None:
    for _ in range(IDENTITY.attempts - 1):
        assert isinstance(store.rate_limits.charge([addr(), ident()]), Charged)  # failures
    ok = store.rate_limits.charge([addr(), ident()])
    assert isinstance(ok, Charged)
    store.rate_limits.refund(ok, clear=[ident().key])
    for _ in range(IDENTITY.attempts):  # the identity starts over
        assert isinstance(store.rate_limits.charge([ident()]), Charged)
    assert isinstance(store.rate_limits.charge([ident()]), Refusal)
    # The address kept its two failures and got the success back: three more pass.
    for _ in range(ADDRESS.attempts - 2):
        assert isinstance(store.rate_limits.charge([addr()]), Charged)
    assert isinstance(store.rate_limits.charge([addr()]), Refusal)


def test_pruning_returns_each_expired_window_with_what_it_refused(
    store: Store, clock: Clock
) -> None:
    for _ in range(ADDRESS.attempts):
        store.rate_limits.charge([addr()])
    for _ in range(7):
        assert isinstance(store.rate_limits.charge([addr()]), Refusal)
    clock.advance(2 * ADDRESS.window - 1)
    assert store.rate_limits.prune() == []  # the sliding window still reads it
    clock.advance(2)
    (expired,) = store.rate_limits.prune()
    assert (expired.kind, expired.label, expired.refused) == ("address", "192.0.2.7", 7)
    assert expired.window_start == T0
    assert store.rate_limits.prune() == []


def test_concurrent_attempts_through_two_stores_never_pass_more_than_the_limit(
    store_url: str, clock: Clock
) -> None:
    """Two members over one store, 40 attempts at once: exactly the limit passes."""
    with Store.open(store_url, clock=clock) as a, Store.open(store_url, clock=clock) as b:
        stores = [a, b]
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            results = list(
                pool.map(
                    lambda i: stores[i % 2].rate_limits.charge([addr(), ident()]),
                    range(40),
                )
            )
    passed = [r for r in results if isinstance(r, Charged)]
    refused = [r for r in results if isinstance(r, Refusal)]
    assert len(passed) == IDENTITY.attempts
    assert len(refused) == 40 - IDENTITY.attempts
    assert sum(r.first for r in refused) == 1  # one audit event for the identity's window


def test_the_default_limits_and_their_bounds() -> None:
    limits = GatewayConfig().identity.rate_limit
    assert limits.enabled
    assert (limits.per_address.attempts, limits.per_address.window) == (20, 60)
    assert (limits.per_identity.attempts, limits.per_identity.window) == (10, 300)
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        RateRule(attempts=0, window=60)
    with pytest.raises(ValidationError, match="less than or equal to 86400"):
        RateRule(attempts=5, window=86401)
