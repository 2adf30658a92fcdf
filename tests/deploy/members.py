"""Gateway members started from the deployment files' configs, as the tests of deploy/ use them."""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from tests.fixtures.wardgate import GatewayProc, ProcessDied, Wardgate, wait_for


@dataclass
class Member(GatewayProc):
    """A gateway whose CA is the fleet's, not one generated in its data directory."""

    fleet_ca: Path = Path()

    @property
    def ca_path(self) -> Path:
        return self.fleet_ca


def start_member_proc(wardgate: Wardgate, member: Member, what: str) -> Member:
    """Start `member` and wait until it answers; a member that refuses its config exits at once,
    and that is said then, not at the deadline."""
    wardgate.procs.append(member)
    member.start()
    wait_for(lambda: not member.alive() or member.healthy(), f"{what} to answer")
    if not member.alive():
        raise ProcessDied(f"{what} exited:\n{member.log()}")
    return member


def served_certificate(port: int, ca: Path) -> bytes:
    context = ssl.create_default_context(cafile=str(ca))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der
