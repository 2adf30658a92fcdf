"""Admission to the public port (sans-I/O): counting unauthenticated connections per address
and in all, releasing each place once, and capping the lines a flood can make us log."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.admission import Admissions, LogCap, Refusal, Ticket, address_key


@pytest.mark.parametrize(
    ("host", "key"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2:aaaa:bbbb:cccc:dddd", "2001:db8:1:2::/64"),
        ("2001:db8:1:2::1", "2001:db8:1:2::/64"),
        ("::ffff:192.0.2.7", "192.0.2.7"),  # an IPv4 client on a dual-stack listener
        ("fe80::1%eth0", "fe80::/64"),
        ("/run/wardgate.sock", "/run/wardgate.sock"),
    ],
)
def test_addresses_count_as_ipv4_hosts_and_ipv6_64s(host: str, key: str) -> None:
    assert address_key(host) == key


def test_the_per_address_limit_refuses_the_next_from_that_address_only() -> None:
    door = Admissions(total=100, per_address=3)
    held = [door.admit("192.0.2.1") for _ in range(3)]
    assert all(isinstance(t, Ticket) for t in held)
    assert door.admit("192.0.2.1") is Refusal.PER_ADDRESS
    assert isinstance(door.admit("192.0.2.2"), Ticket)
    # an attacker cycling the low bits of an IPv6 /64 is one address
    v6 = [door.admit(f"2001:db8::{n:x}") for n in range(4)]
    assert v6[3] is Refusal.PER_ADDRESS


def test_the_total_limit_refuses_every_address() -> None:
    door = Admissions(total=2, per_address=5)
    assert isinstance(door.admit("192.0.2.1"), Ticket)
    assert isinstance(door.admit("192.0.2.2"), Ticket)
    assert door.admit("192.0.2.3") is Refusal.TOTAL
    assert door.open == 2


def test_a_place_is_given_back_once_whoever_releases_it() -> None:
    door = Admissions(total=10, per_address=1)
    ticket = door.admit("192.0.2.1")
    assert isinstance(ticket, Ticket)
    told: list[str] = []
    ticket.on_release.append(lambda: told.append("released"))
    ticket.release()  # authenticated
    ticket.release()  # and later closed: not counted twice
    assert told == ["released"]
    assert door.open == 0 and door.open_from("192.0.2.1") == 0
    assert isinstance(door.admit("192.0.2.1"), Ticket)


@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.booleans()), max_size=60))
def test_counts_match_the_open_tickets_whatever_the_order(steps: list[tuple[str, bool]]) -> None:
    door = Admissions(total=7, per_address=3)
    live: list[Ticket] = []
    for host, release in steps:
        if release and live:
            live.pop(0).release()
            continue
        ticket = door.admit(host)
        if isinstance(ticket, Ticket):
            live.append(ticket)
    assert door.open == len(live) <= 7
    for host in "abc":
        assert door.open_from(host) == sum(t.key == host for t in live) <= 3


def test_the_log_cap_lets_one_line_through_per_interval_and_counts_the_rest() -> None:
    cap = LogCap(10.0)
    assert cap.due(100.0) == 0
    assert [cap.due(100.0 + n / 10) for n in range(1, 50)] == [None] * 49
    assert cap.due(110.0) == 49  # the next line says how many were held back
    assert cap.due(115.0) is None
    assert cap.due(120.0) == 1
