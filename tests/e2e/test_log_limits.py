"""What an unauthenticated peer sends cannot make the gateway write megabytes to its log
(a real gateway process; a raw TCP peer with a 300 KB SSH banner)."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from cli.runtime import MAX_LOG_MESSAGE
from tests.fixtures.wardgate import GatewayProc, Wardgate, wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProc]:
    wg = Wardgate(tmp_path_factory.mktemp("loglimits"))
    try:
        yield wg.gateway()
    finally:
        wg.close()


def _closed_by_peer(sock: socket.socket) -> bool:
    try:
        return sock.recv(65536) == b""
    except TimeoutError:
        return False
    except OSError:
        return True


def test_a_huge_ssh_banner_is_not_written_whole(gw: GatewayProc) -> None:
    with socket.create_connection(("127.0.0.1", gw.public_port), timeout=1) as peer:
        peer.sendall(b"SSH-2.0-" + b"A" * 300_000 + b"\r\n")
        wait_for(lambda: _closed_by_peer(peer), "the gateway to hang up on the peer")
    assert gw.healthy()
    log = gw.log(tail=100_000)
    assert "A" * 5000 not in log
    assert max(len(line) for line in log.splitlines()) < MAX_LOG_MESSAGE + 200
