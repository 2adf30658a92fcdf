"""A member id names the host, the worker of `gateway --workers`, and is new every start."""

from __future__ import annotations

import socket

from gateway.fleet.membership import new_member_id


def test_a_workers_member_id_names_the_host_and_the_worker() -> None:
    host = socket.gethostname()[:48]
    one, again = new_member_id(1), new_member_id(1)
    assert one.startswith(f"{host}-w1-") and again.startswith(f"{host}-w1-")
    assert one != again  # a restarted worker is a new member
    assert "-w" not in new_member_id().removeprefix(host)
