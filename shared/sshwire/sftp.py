"""Watching an sftp subsystem channel for file transfers (sans-I/O, observe-only).

The gateway relays sftp bytes unchanged; this reads a copy of both directions to say what
was transferred: for each file handle, from OPEN to CLOSE, its path, the bytes written
(upload) and read (download), and the SHA-256 of those bytes when they passed in offset
order from offset 0 (what OpenSSH's sftp and scp do; a client that seeks gets no hash).

Rules it keeps:
- Packets are `u32 length | u8 type | u32 id | ...` (SFTP v3, draft-ietf-secsh-filexfer-02).
- OPEN is paired with its HANDLE answer by request id; READ with its DATA answer by id.
- A packet longer than MAX_PACKET, or one it cannot read, ends the observation for the
  channel (`broken` is set, one `ObserverStopped` event says why); the relay is unaffected.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field
from typing import Any

MAX_PACKET = 512 * 1024  # OpenSSH's sftp-server refuses packets above 256 KiB

OPEN, CLOSE, READ, WRITE = 3, 4, 5, 6
REMOVE, MKDIR, RMDIR, RENAME = 13, 14, 15, 18
STATUS, HANDLE, DATA = 101, 102, 103
_PATH_OPS = {REMOVE: "remove", MKDIR: "mkdir", RMDIR: "rmdir"}
_U32 = struct.Struct("!I")
_U64 = struct.Struct("!Q")


@dataclass(frozen=True, slots=True)
class FileTransferred:
    """A file handle was closed; what went through it."""

    path: str
    uploaded: int  # bytes written by the client
    downloaded: int  # bytes read by the client
    sha256: str | None  # of the bytes, when they passed in order from offset 0


@dataclass(frozen=True, slots=True)
class FileOperation:
    op: str  # remove | mkdir | rmdir | rename
    path: str
    target: str = ""


@dataclass(frozen=True, slots=True)
class ObserverStopped:
    reason: str


SftpEvent = FileTransferred | FileOperation | ObserverStopped


@dataclass(eq=False)
class _File:
    path: str
    written: int = 0
    read: int = 0
    next_offset: int = 0
    in_order: bool = True
    hasher: Any = field(default_factory=hashlib.sha256)

    def take(self, offset: int, data: bytes | memoryview) -> None:
        if self.in_order and offset == self.next_offset:
            self.hasher.update(data)
            self.next_offset += len(data)
        else:
            self.in_order = False


class _Reader:
    """Cursor over one packet body."""

    def __init__(self, body: memoryview) -> None:
        self.body = body
        self.pos = 0

    def u32(self) -> int:
        if self.pos + 4 > len(self.body):
            raise ValueError("truncated")
        (value,) = _U32.unpack_from(self.body, self.pos)
        self.pos += 4
        return int(value)

    def u64(self) -> int:
        if self.pos + 8 > len(self.body):
            raise ValueError("truncated")
        (value,) = _U64.unpack_from(self.body, self.pos)
        self.pos += 8
        return int(value)

    def string(self) -> memoryview:
        n = self.u32()
        if self.pos + n > len(self.body):
            raise ValueError("truncated")
        out = self.body[self.pos : self.pos + n]
        self.pos += n
        return out


class _Framer:
    def __init__(self) -> None:
        self.buf = bytearray()

    def packets(self, data: bytes) -> list[bytes]:
        self.buf += data
        out: list[bytes] = []
        while len(self.buf) >= 4:
            (length,) = _U32.unpack_from(self.buf, 0)
            if length < 1 or length > MAX_PACKET:
                raise ValueError(f"packet of {length} bytes")
            if len(self.buf) < 4 + length:
                break
            out.append(bytes(self.buf[4 : 4 + length]))
            del self.buf[: 4 + length]
        return out


class SftpObserver:
    def __init__(self) -> None:
        self._client = _Framer()
        self._server = _Framer()
        self._opening: dict[int, str] = {}  # request id -> path
        self._renaming: dict[int, tuple[str, str]] = {}
        self._files: dict[bytes, _File] = {}
        self._reads: dict[int, tuple[bytes, int]] = {}  # request id -> (handle, offset)
        self.broken: str | None = None

    def client_data(self, data: bytes) -> list[SftpEvent]:
        return self._feed(self._client, data, self._client_packet)

    def server_data(self, data: bytes) -> list[SftpEvent]:
        return self._feed(self._server, data, self._server_packet)

    def _feed(self, framer: _Framer, data: bytes, handle: Any) -> list[SftpEvent]:
        if self.broken is not None:
            return []
        events: list[SftpEvent] = []
        try:
            for packet in framer.packets(data):
                handle(memoryview(packet), events)
        except (ValueError, UnicodeDecodeError) as exc:
            self.broken = str(exc)
            framer.buf.clear()
            events.append(ObserverStopped(f"unreadable sftp traffic: {exc}"))
        return events

    def _client_packet(self, body: memoryview, events: list[SftpEvent]) -> None:
        kind = body[0]
        r = _Reader(body[1:])
        if kind == 1:  # INIT carries a version, not an id
            return
        request = r.u32()
        if kind == OPEN:
            self._opening[request] = _path(r.string())
        elif kind == WRITE:
            file = self._files.get(bytes(r.string()))
            offset = r.u64()
            data = r.string()
            if file is not None:
                file.take(offset, data)
                file.written = max(file.written, offset + len(data))
        elif kind == READ:
            handle = bytes(r.string())
            if handle in self._files:
                self._reads[request] = (handle, r.u64())
        elif kind == CLOSE:
            file = self._files.pop(bytes(r.string()), None)
            if file is not None:
                hashed = file.in_order and file.next_offset == file.written + file.read
                events.append(
                    FileTransferred(
                        file.path,
                        file.written,
                        file.read,
                        file.hasher.hexdigest() if hashed and file.next_offset else None,
                    )
                )
        elif kind in _PATH_OPS:
            events.append(FileOperation(_PATH_OPS[kind], _path(r.string())))
        elif kind == RENAME:
            old = _path(r.string())
            events.append(FileOperation("rename", old, _path(r.string())))

    def _server_packet(self, body: memoryview, events: list[SftpEvent]) -> None:
        kind = body[0]
        r = _Reader(body[1:])
        if kind == 2:  # VERSION
            return
        request = r.u32()
        if kind == HANDLE:
            path = self._opening.pop(request, None)
            if path is not None:
                self._files[bytes(r.string())] = _File(path)
        elif kind == DATA:
            pending = self._reads.pop(request, None)
            if pending is not None:
                file = self._files.get(pending[0])
                if file is not None:
                    data = r.string()
                    file.take(pending[1], data)
                    file.read += len(data)
        elif kind == STATUS:
            self._opening.pop(request, None)
            self._reads.pop(request, None)


def _path(raw: memoryview) -> str:
    return bytes(raw).decode("utf-8", "replace")
