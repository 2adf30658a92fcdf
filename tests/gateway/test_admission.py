"""Admission to the public port (sans-I/O): counting unauthenticated connections per address
and in all, releasing each place once, and capping the lines a flood can make us log."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.admission import Admissions, LogCap, Refusal, Ticket
from gateway.ratelimit import address_key


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


def admitted(door: Admissions, host: str) -> Ticket:
    result = door.admit(host)
    assert not isinstance(result, Refusal), f"{host} refused"
    ticket, evicted = result
    assert evicted is None
    return ticket


def test_the_per_address_limit_refuses_the_next_from_that_address_only() -> None:
    door = Admissions(total=100, per_address=3)
    for _ in range(3):
        admitted(door, "192.0.2.1")
    assert door.admit("192.0.2.1") is Refusal.PER_ADDRESS
    admitted(door, "192.0.2.2")
    # an attacker cycling the low bits of an IPv6 /64 is one address
    for n in range(3):
        admitted(door, f"2001:db8::{n:x}")
    assert door.admit("2001:db8::ffff") is Refusal.PER_ADDRESS


def test_the_total_limit_evicts_the_oldest_to_admit_the_newest() -> None:
    door = Admissions(total=2, per_address=5)
    first = admitted(door, "192.0.2.1")
    closed: list[str] = []
    first.on_evict.append(lambda: closed.append("first"))
    second = admitted(door, "192.0.2.2")
    result = door.admit("192.0.2.3")
    assert not isinstance(result, Refusal)
    third, evicted = result
    assert evicted is first and first.evicted and first.released and closed == ["first"]
    assert door.open == 2 and door.open_from("192.0.2.1") == 0
    second.release()  # authenticated: no longer counted, never evicted
    admitted(door, "192.0.2.4")
    result = door.admit("192.0.2.5")
    assert not isinstance(result, Refusal) and result[1] is third  # the oldest still waiting
    assert not second.evicted


def test_a_place_is_given_back_once_whoever_releases_it() -> None:
    door = Admissions(total=10, per_address=1)
    ticket = admitted(door, "192.0.2.1")
    ticket.release()  # authenticated
    ticket.release()  # and later closed: not counted twice
    assert door.open == 0 and door.open_from("192.0.2.1") == 0
    admitted(door, "192.0.2.1")


@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.booleans()), max_size=60))
def test_counts_match_the_open_tickets_whatever_the_order(steps: list[tuple[str, bool]]) -> None:
    door = Admissions(total=7, per_address=3)
    live: list[Ticket] = []
    for host, release in steps:
        if release and live:
            live.pop(0).release()
            continue
        result = door.admit(host)
        if not isinstance(result, Refusal):
            ticket, evicted = result
            if evicted is not None:
                live.remove(evicted)
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
