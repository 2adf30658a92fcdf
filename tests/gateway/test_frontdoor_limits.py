"""The front door's bounds on unauthenticated connections, on real loopback sockets: the
sniffer waits on readiness (no polling), limits per address and in all refuse at accept,
and each pre-authentication phase has its deadline. A stand-in SSH handler (a line, then
`authenticated()` for the right one, then echo) plays the protocol side."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import socket
import ssl
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.audit import Auditor
from gateway.config import FrontDoorConfig
from gateway.frontdoor import FrontDoor, Kind, _peek, authenticated, current_admission
from gateway.metrics import render
from gateway.store import Store

WAIT = 30.0  # a test's deadline for a condition; never what it asserts


class CountingSocket(socket.socket):
    """Counts the peeks the sniffer makes."""

    peeks = 0

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        self.peeks += 1
        return super().recv(bufsize, flags)


@pytest.fixture
def tcp_pair() -> Iterator[tuple[CountingSocket, socket.socket]]:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        accepted, _ = listener.accept()
    server = CountingSocket(fileno=accepted.detach())
    server.setblocking(False)
    try:
        yield server, client
    finally:
        server.close()
        client.close()


async def until(condition: Callable[[], object], what: str) -> None:
    """Wait for `condition` (state of the door, changed by its own tasks) with a deadline."""
    async with asyncio.timeout(WAIT):
        while not condition():  # noqa: ASYNC110 (no event to wait on: the door's counters)
            await asyncio.sleep(0.01)
    assert condition(), what


# ---- the sniffer ---------------------------------------------------------------------


async def test_a_partial_prefix_is_waited_for_without_polling(
    tcp_pair: tuple[CountingSocket, socket.socket],
) -> None:
    server, client = tcp_pair
    client.sendall(b"SS")  # "SSH-" needs two more bytes, which never come
    loop = asyncio.get_running_loop()
    seen = await _peek(server, loop.time() + 0.5)
    assert seen == b"SS"
    # one look at the two bytes, then readiness: the 5 ms poll looked ~100 times here
    assert server.peeks <= 2
    assert server.getsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT) == 1  # restored


async def test_a_prefix_arriving_byte_by_byte_is_decided(
    tcp_pair: tuple[CountingSocket, socket.socket],
) -> None:
    server, client = tcp_pair
    loop = asyncio.get_running_loop()
    async with asyncio.TaskGroup() as tg:
        sniff = tg.create_task(_peek(server, loop.time() + WAIT))
        for byte in b"SSH-":
            before = server.peeks
            client.sendall(bytes([byte]))
            if byte != ord("-"):
                await until(lambda: server.peeks > before, "the sniffer to look again")  # noqa: B023
    assert sniff.result() == b"SSH-"
    assert server.peeks == 4  # once per byte
    assert server.recv(16) == b"SSH-"  # only peeked: the handler reads from the first byte


async def test_a_peer_closing_mid_prefix_ends_the_sniff_at_once(
    tcp_pair: tuple[CountingSocket, socket.socket],
) -> None:
    server, client = tcp_pair
    client.sendall(b"\x00\x00")
    client.shutdown(socket.SHUT_WR)
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(WAIT):  # its own deadline is an hour away
        assert await _peek(server, loop.time() + 3600) == b"\x00\x00"


# ---- the front door --------------------------------------------------------------------


async def stand_in_ssh(sock: socket.socket, client: str) -> None:
    """Reads a line; "SSH-2.0-ok" authenticates, then echoes."""
    loop = asyncio.get_running_loop()
    try:
        line = b""
        while not line.endswith(b"\n"):
            chunk = await loop.sock_recv(sock, 1)
            if not chunk:
                return
            line += chunk
        if line == b"SSH-2.0-ok\r\n":
            authenticated()
            authenticated()  # idempotent
            await loop.sock_sendall(sock, b"welcome\n")
            while data := await loop.sock_recv(sock, 100):
                await loop.sock_sendall(sock, data)
    finally:
        sock.close()


class Door:
    def __init__(self, door: FrontDoor, port: int) -> None:
        self.door = door
        self.port = port

    def metric(self, line: str) -> float:
        for row in render(self.door.counters()).splitlines():
            name, _, value = row.rpartition(" ")
            if name == line:
                return float(value)
        return 0.0

    async def connect(
        self, source: str = "127.0.0.1"
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port, local_addr=(source, 0))


@contextlib.asynccontextmanager
async def front_door(tmp_path: Path, **limits: Any) -> AsyncIterator[Door]:
    store = Store.open(f"sqlite:///{tmp_path / 'wg.db'}")
    auditor = Auditor(store)

    async def no_http(r: asyncio.StreamReader, w: asyncio.StreamWriter, c: str) -> None:
        raise AssertionError("no HTTP in these tests")

    door = FrontDoor(
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH),
        auditor,
        no_http,
        limits=FrontDoorConfig(**limits),
    )
    door.plain_handlers[Kind.SSH] = stand_in_ssh
    listener = socket.create_server(("0.0.0.0", 0))
    try:
        async with asyncio.TaskGroup() as tg:
            serving = tg.create_task(door.serve(listener))
            try:
                yield Door(door, listener.getsockname()[1])
            finally:
                serving.cancel()
    finally:
        listener.close()
        await auditor.aclose()
        store.close()


async def closed(reader: asyncio.StreamReader) -> bool:
    """True once the gateway closed the connection (EOF or reset), whatever it sent first."""
    try:
        async with asyncio.timeout(WAIT):
            while await reader.read(4096):
                pass
    except ConnectionResetError:
        pass
    return True


async def test_the_per_address_limit_refuses_at_accept_and_spares_other_addresses(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with front_door(tmp_path, max_unauthenticated_per_address=3) as gw:
        held = [await gw.connect("127.0.0.2") for _ in range(3)]
        for _, w in held:
            w.write(b"SSH-2.0-trickle")  # no end of line: never authenticates
        await until(lambda: gw.door.admissions.open == 3, "three admitted")
        caplog.set_level(logging.INFO, logger="gateway.frontdoor")
        over = [await gw.connect("127.0.0.2") for _ in range(20)]
        for r, _ in over:
            assert await closed(r)
        assert gw.metric('wardgate_frontdoor_refused_total{reason="per_address"}') == 20
        warnings = [r for r in caplog.records if r.name == "gateway.frontdoor"]
        assert len(warnings) == 1  # 20 refusals, one line
        assert "127.0.0.2" in warnings[0].getMessage()
        assert "max_unauthenticated_per_address" in warnings[0].getMessage()

        # another address gets in, and authenticates
        ok_r, ok_w = await gw.connect("127.0.0.1")
        ok_w.write(b"SSH-2.0-ok\r\n")
        assert await ok_r.readline() == b"welcome\n"
        assert gw.metric("wardgate_frontdoor_unauthenticated_connections") == 3
        for _, w in [*held, *over, (ok_r, ok_w)]:
            w.close()
        await until(lambda: gw.door.admissions.open == 0, "every place given back")


async def test_the_total_limit_closes_the_oldest_unauthenticated_for_a_new_client(
    tmp_path: Path,
) -> None:
    async with front_door(tmp_path, max_unauthenticated=2) as gw:
        oldest_r, oldest_w = await gw.connect("127.0.0.2")
        await until(lambda: gw.door.admissions.open == 1, "the oldest admitted")
        held_r, held_w = await gw.connect("127.0.0.3")
        await until(lambda: gw.door.admissions.open == 2, "two admitted")
        new_r, new_w = await gw.connect("127.0.0.4")
        assert await closed(oldest_r)
        new_w.write(b"SSH-2.0-ok\r\n")
        assert await new_r.readline() == b"welcome\n"  # in, and authenticated
        assert gw.metric('wardgate_frontdoor_evicted_total{limit="total"}') == 1
        assert gw.metric('wardgate_frontdoor_deadline_closed_total{phase="login"}') == 0
        assert gw.door.admissions.open == 1  # the held one, still waiting
        assert not held_r.at_eof()
        for w in (oldest_w, held_w, new_w):
            w.close()


async def test_each_pre_auth_phase_has_its_deadline(tmp_path: Path) -> None:
    async with front_door(
        tmp_path, sniff_timeout=0.5, tls_handshake_timeout=0.5, login_timeout=2.0
    ) as gw:
        # authenticated first: past its login deadline by the time the slow ones are closed
        ok_r, ok_w = await gw.connect()
        ok_w.write(b"SSH-2.0-ok\r\n")
        assert await ok_r.readline() == b"welcome\n"

        sniff_r, sniff_w = await gw.connect()
        sniff_w.write(b"SS")  # a prefix that names nothing yet
        tls_r, tls_w = await gw.connect()
        tls_w.write(b"\x16\x03\x01\x00\xff")  # a ClientHello that never comes whole
        login_r, login_w = await gw.connect()
        login_w.write(b"SSH-2.0-")  # a banner trickled one byte at a time

        async def trickle() -> None:
            while not login_r.at_eof():
                login_w.write(b"x")
                with contextlib.suppress(ConnectionError):
                    await login_w.drain()
                await asyncio.sleep(0.1)

        async with asyncio.TaskGroup() as tg:
            tg.create_task(trickle())
            assert await closed(sniff_r) and await closed(tls_r) and await closed(login_r)
        for phase in ("sniff", "tls", "login"):
            assert gw.metric(f'wardgate_frontdoor_deadline_closed_total{{phase="{phase}"}}') == 1
        ok_w.write(b"still here\n")
        assert await ok_r.readline() == b"still here\n"  # its deadline was lifted
        assert gw.door.admissions.open == 0
        for w in (ok_w, sniff_w, tls_w, login_w):
            w.close()


def test_outside_a_connection_authenticated_does_nothing() -> None:
    authenticated()
    current_admission().authenticated()


async def test_out_of_descriptors_the_door_waits_and_accepts_again(tmp_path: Path) -> None:
    async with front_door(tmp_path) as gw:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        waiting: list[socket.socket] = []
        try:
            # connected in the kernel's backlog while the loop is not running the door
            waiting = [socket.create_connection(("127.0.0.1", gw.port)) for _ in range(3)]
            in_use = len(os.listdir("/proc/self/fd"))
            resource.setrlimit(resource.RLIMIT_NOFILE, (in_use, hard))  # accept: EMFILE
            await until(
                lambda: gw.metric('wardgate_frontdoor_accept_errors_total{error="EMFILE"}') > 0,
                "an accept to fail for want of descriptors",
            )
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        await until(lambda: gw.door.admissions.open == 3, "the waiting three admitted")
        for s in waiting:
            s.close()


async def test_the_counters_render_with_the_open_count_as_a_gauge(tmp_path: Path) -> None:
    async with front_door(tmp_path) as gw:
        _, w = await gw.connect()
        await until(lambda: gw.door.admissions.open == 1, "one admitted")
        text = render(gw.door.counters())
        assert (
            "# TYPE wardgate_frontdoor_unauthenticated_connections gauge\n"
            "wardgate_frontdoor_unauthenticated_connections 1\n"
        ) in text
        assert "# TYPE wardgate_frontdoor_refused_total counter\n" in text
        w.close()
        await until(lambda: gw.door.admissions.open == 0, "its place given back at close")
