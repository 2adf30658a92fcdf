"""The agent's set of member loops (agent/fleet.py), as playbooks without sockets."""

from __future__ import annotations

from agent.fleet import Fleet

SEED = "gw.example:8444"
M1, M2, M3 = "10.0.0.1:8444", "10.0.0.2:8444", "10.0.0.3:8444"


def fleet_with(*running: str) -> Fleet:
    fleet = Fleet(SEED)
    for address in (SEED, *running):
        fleet.started(address)
    return fleet


def test_a_welcome_listing_members_starts_a_loop_for_each_new_one() -> None:
    fleet = fleet_with()
    changes = fleet.learn([M1, M2])
    assert changes.start == {M1, M2}
    assert changes.retire == set()


def test_a_gateway_that_names_no_members_changes_nothing() -> None:
    fleet = fleet_with(M1)
    fleet.learn([M1])
    changes = fleet.learn([])
    assert not changes.start and not changes.retire
    assert fleet.wants(M1)


def test_a_member_gone_from_the_list_is_retired_and_its_loop_stops_when_not_connected() -> None:
    fleet = fleet_with(M1, M2)
    fleet.learn([M1, M2])
    fleet.connected(M2, M2)
    changes = fleet.learn([M1])
    assert changes.retire == {M2}
    assert not fleet.wants(M2)
    # Its live connection is left alone; only once it ends does the loop stop.
    assert fleet.states[M2].connected
    fleet.disconnected(M2, "gateway closed the control stream")
    assert fleet.finish(M2) is False
    assert M2 not in fleet.states
    assert fleet.finish(M1) is True


def test_a_member_back_in_the_list_gets_a_loop_again() -> None:
    fleet = fleet_with(M1)
    fleet.learn([M1])
    fleet.learn([])  # ignored
    fleet.learn([M2])
    assert fleet.finish(M1) is False
    changes = fleet.learn([M1, M2])
    assert changes.start == {M1, M2}  # M2's loop was never started in this playbook


def test_the_seed_is_never_retired() -> None:
    fleet = fleet_with()
    fleet.learn([M1])
    assert fleet.wants(SEED)
    assert fleet.finish(SEED) is True


def test_the_seed_that_reached_a_member_stands_in_for_that_members_loop() -> None:
    fleet = fleet_with()
    assert fleet.may_dial(SEED)
    fleet.connected(SEED, M1)  # through the balancer, to member 1
    fleet.learn([M1, M2])
    fleet.started(M1)
    fleet.started(M2)
    assert not fleet.may_dial(M1)  # held by the seed's connection
    assert fleet.may_dial(M2)
    fleet.disconnected(SEED, "lost")
    assert fleet.may_dial(M1)


def test_the_seed_outside_the_list_dials_only_while_nothing_is_connected() -> None:
    fleet = fleet_with(M1)
    fleet.learn([M1])
    fleet.connected(M1, M1)
    assert not fleet.may_dial(SEED)
    assert fleet.any_connected
    fleet.disconnected(M1, "lost")
    assert fleet.may_dial(SEED)
    assert not fleet.any_connected


def test_a_seed_that_is_a_member_dials_like_any_member() -> None:
    fleet = Fleet(M1)
    fleet.started(M1)
    fleet.learn([M1, M2])
    fleet.started(M2)
    fleet.connected(M2, M2)
    assert fleet.may_dial(M1)  # another member's connection does not hold it back


def test_a_newer_connection_to_the_same_member_takes_over_the_claim() -> None:
    fleet = fleet_with(M1)
    fleet.learn([M1])
    fleet.connected(M1, M1)
    fleet.connected(SEED, M1)  # both reached member 1: the gateway keeps the newer one
    fleet.disconnected(M1, "replaced by a newer connection")
    assert fleet.any_connected
    assert not fleet.may_dial(M1)  # the seed's connection holds member 1
    fleet.disconnected(SEED, "lost")
    assert fleet.may_dial(M1)


def test_member_state_reports_connection_and_last_error() -> None:
    fleet = fleet_with(M1)
    fleet.learn([M1])
    fleet.connected(M1, M1)
    state = fleet.states[M1]
    assert (state.connected, state.reached, state.connects) == (True, M1, 1)
    fleet.disconnected(M1, "gateway silent for 3s")
    assert (state.connected, state.reached, state.last_error) == (
        False,
        "",
        "gateway silent for 3s",
    )
    fleet.connected(M1, "")  # a gateway that does not name itself: the address dialled
    assert (state.reached, state.connects, state.last_error) == (M1, 2, "")


def test_a_list_repeating_a_member_keeps_one() -> None:
    fleet = fleet_with()
    changes = fleet.learn([M3, M3, M1])
    assert changes.start == {M1, M3}
    assert fleet.known == (M3, M1)
