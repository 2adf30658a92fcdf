"""The SSH front door's paramiko threads and the event loop (issue 15, "SSH threads race
the loop"): a channel's recording read once per use, coroutines started from threads
owned and awaited, a thread's wait that gives up cancels what it waited for.

The door's collaborators are small stand-ins (a channel that records what it is sent, an
audit log and a broker that list what they are asked); the paramiko-facing code under
test is the door's own.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from gateway.protocols.ssh import _CastFile, _Channel, _Connection, _write_client
from shared.recording.asciicast import Header
from shared.sshwire import frames as f


class ClientChannel:
    """What a paramiko Channel is asked to send, in order."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []
        self.closed = False

    def sendall(self, data: bytes) -> None:
        self.sent.append(("out", data))

    def sendall_stderr(self, data: bytes) -> None:
        self.sent.append(("err", data))

    def shutdown_write(self) -> None:
        self.sent.append(("eof", b""))

    def close(self) -> None:
        self.closed = True


class RacingChannel(_Channel):
    """A channel whose recording the loop closes right after a thread has looked at it:
    every read of `cast` after the first sees None, as `_close_cast` leaves it."""

    @property
    def cast(self) -> _CastFile | None:
        value: _CastFile | None = self.__dict__.get("_cast")
        self.__dict__["_cast"] = None
        return value

    @cast.setter
    def cast(self, value: _CastFile | None) -> None:
        self.__dict__["_cast"] = value


def recording(path: Path) -> _CastFile:
    return _CastFile(path, Header(80, 24, 0, "xterm", "test"))


def test_output_is_recorded_and_sent_when_the_recording_closes_meanwhile(tmp_path: Path) -> None:
    ch = RacingChannel(1, "session")
    cast_file = recording(tmp_path / "1.cast")
    ch.cast = cast_file
    chan = ClientChannel()
    ch.chan = cast(Any, chan)
    ch.attached.set()
    _write_client(ch, f.ChannelData(1, b"hello"))  # before the fix: AttributeError on None
    assert chan.sent == [("out", b"hello")]
    cast_file.close()
    assert '"o", "hello"' in (tmp_path / "1.cast").read_text()


class Audit:
    """Records events; an `ssh.recording` waits for `gate` (a slow audit log)."""

    def __init__(self, log: list[str]) -> None:
        self.log = log
        self.gate = asyncio.Event()
        self.started = asyncio.Event()

    async def record(self, kind: str, **data: Any) -> None:
        if kind == "ssh.recording":
            self.started.set()
            await self.gate.wait()
        self.log.append(kind)

    def submit(self, kind: str, **data: Any) -> None:
        self.log.append(kind)


class Broker:
    def __init__(self, log: list[str]) -> None:
        self.log = log

    async def finish(self, session: Any, *, error: str | None = None) -> None:
        self.log.append("session.end")


@pytest.fixture
def sock() -> Iterator[socket.socket]:
    a, b = socket.socketpair()
    yield a
    a.close()
    b.close()


async def connection(tmp_path: Path, sock: socket.socket, log: list[str]) -> _Connection:
    door = SimpleNamespace(audit=Audit(log), broker=Broker(log), recordings=tmp_path)
    conn = _Connection(cast(Any, door), sock, "127.0.0.1:1")
    conn.session = cast(Any, SimpleNamespace(id="s1", stream=SimpleNamespace(finished=True)))
    return conn


async def test_a_recording_closed_by_a_thread_is_audited_before_the_session_ends(
    tmp_path: Path, sock: socket.socket
) -> None:
    log: list[str] = []
    conn = await connection(tmp_path, sock, log)
    audit = cast(Audit, conn.door.audit)
    ch = _Channel(1, "session")
    ch.cast = recording(tmp_path / "s1" / "1.cast")
    chan = ClientChannel()
    ch.chan = cast(Any, chan)
    ch.attached.set()
    conn.channels[1] = ch
    # The channel's writer thread writes the target's close and hands the recording on.
    done = await asyncio.to_thread(conn._write, ch, f.ChannelClose(1))
    assert done and chan.closed and conn.channels == {}
    async with asyncio.timeout(10):
        await audit.started.wait()
    async with asyncio.TaskGroup() as tg:
        finishing = tg.create_task(conn._finish())
        # Before the fix nothing owned that coroutine, and the session ended without it.
        finished, _ = await asyncio.wait({finishing}, timeout=0.5)
        assert not finished, "the session ended before its recording was audited"
        audit.gate.set()
    assert log == ["ssh.recording", "session.end"]


async def test_a_threads_wait_that_gives_up_cancels_the_coroutine(
    tmp_path: Path, sock: socket.socket
) -> None:
    conn = await connection(tmp_path, sock, [])
    started = threading.Event()
    cancelled = asyncio.Event()

    async def never() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    with pytest.raises(concurrent.futures.TimeoutError):
        await asyncio.to_thread(conn._wait, never(), 0.2)
    assert started.is_set()
    async with asyncio.timeout(10):  # before the fix it ran on, awaited by nobody
        await cancelled.wait()
