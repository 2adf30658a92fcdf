"""The sftp observer: transfers from OPEN to CLOSE, with sizes and hashes, from both directions."""

from __future__ import annotations

import hashlib
import struct

from hypothesis import given
from hypothesis import strategies as st

from shared.sshwire.sftp import (
    FileOperation,
    FileTransferred,
    ObserverStopped,
    SftpObserver,
)


def packet(kind: int, *fields: bytes) -> bytes:
    body = bytes((kind,)) + b"".join(fields)
    return struct.pack("!I", len(body)) + body


def u32(n: int) -> bytes:
    return struct.pack("!I", n)


def u64(n: int) -> bytes:
    return struct.pack("!Q", n)


def s(data: bytes) -> bytes:
    return u32(len(data)) + data


def test_upload_in_pieces_across_reads() -> None:
    obs = SftpObserver()
    content = bytes(range(256)) * 100
    wire = packet(1, u32(3)) + packet(3, u32(1), s(b"/tmp/up.bin"), u32(0x1A), u32(0))
    assert obs.client_data(wire) == []
    assert obs.server_data(packet(2, u32(3)) + packet(102, u32(1), s(b"H1"))) == []
    writes = b"".join(
        packet(6, u32(10 + i), s(b"H1"), u64(i * 1000), s(content[i * 1000 : (i + 1) * 1000]))
        for i in range(26)
    )
    events = []
    for i in range(0, len(writes), 333):  # packets split anywhere
        events += obs.client_data(writes[i : i + 333])
    events += obs.client_data(packet(4, u32(99), s(b"H1")))
    assert events == [
        FileTransferred("/tmp/up.bin", len(content), 0, hashlib.sha256(content).hexdigest())
    ]


def test_download_pairs_reads_with_data_and_seeks_lose_the_hash() -> None:
    obs = SftpObserver()
    obs.client_data(packet(3, u32(1), s(b"f"), u32(1), u32(0)))
    obs.server_data(packet(102, u32(1), s(b"H")))
    obs.client_data(
        packet(5, u32(2), s(b"H"), u64(0), u32(4)) + packet(5, u32(3), s(b"H"), u64(4), u32(4))
    )
    obs.server_data(packet(103, u32(2), s(b"abcd")) + packet(103, u32(3), s(b"ef")))
    obs.server_data(packet(101, u32(4), u32(1), s(b"EOF"), s(b"")))
    (done,) = obs.client_data(packet(4, u32(5), s(b"H")))
    assert done == FileTransferred("f", 0, 6, hashlib.sha256(b"abcdef").hexdigest())
    obs.client_data(packet(3, u32(6), s(b"g"), u32(2), u32(0)))
    obs.server_data(packet(102, u32(6), s(b"G")))
    obs.client_data(packet(6, u32(7), s(b"G"), u64(10), s(b"x")))
    (seeked,) = obs.client_data(packet(4, u32(8), s(b"G")))
    assert seeked == FileTransferred("g", 11, 0, None)


def test_path_operations() -> None:
    obs = SftpObserver()
    events = obs.client_data(packet(13, u32(1), s(b"/a")) + packet(18, u32(2), s(b"/b"), s(b"/c")))
    assert events == [FileOperation("remove", "/a"), FileOperation("rename", "/b", "/c")]


def test_an_oversized_packet_stops_observing_not_relaying() -> None:
    obs = SftpObserver()
    (stopped,) = obs.client_data(u32(10 * 1024 * 1024) + b"\x03")
    assert isinstance(stopped, ObserverStopped)
    assert obs.client_data(packet(13, u32(1), s(b"/a"))) == []


@given(st.binary(max_size=300), st.binary(max_size=300))
def test_garbage_never_raises(client: bytes, server: bytes) -> None:
    obs = SftpObserver()
    obs.client_data(client)
    obs.server_data(server)


def test_legacy_scp_files_in_directories_split_anywhere() -> None:
    from shared.sshwire.scp import ScpObserver

    a, b = b"hello\n" * 1000, b"x"
    wire = (
        b"T1 0 1 0\nD0755 0 dir\nC0644 %d a.txt\n" % len(a)
        + a
        + b"\x00C0600 1 b\n"
        + b
        + b"\x00E\n"
    )
    obs = ScpObserver(upload=True)
    events = []
    for i in range(0, len(wire), 7):
        events += obs.data(wire[i : i + 7])
    assert events == [
        FileTransferred("dir/a.txt", len(a), 0, hashlib.sha256(a).hexdigest()),
        FileTransferred("dir/b", 1, 0, hashlib.sha256(b).hexdigest()),
    ]
    (stopped,) = ScpObserver(upload=False).data(b"Q what\n")
    assert isinstance(stopped, ObserverStopped)


@given(st.binary(max_size=300))
def test_scp_garbage_never_raises(data: bytes) -> None:
    from shared.sshwire.scp import ScpObserver

    ScpObserver(upload=True).data(data)
