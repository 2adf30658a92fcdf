"""Watching legacy scp (`scp -O`: `scp -t` / `scp -f` run as exec) for files (sans-I/O).

Only the sending side's bytes are read: a sequence of control lines (`C<mode> <size>
<name>`, `D<mode> 0 <dir>` and `E` around directories, `T...` times) each followed, for
`C`, by exactly `size` bytes and one NUL. Each file gives one `FileTransferred` with its
path (relative to the command's target), size and SHA-256. Anything else ends the
observation (`ObserverStopped`); the relay is unaffected.
"""

from __future__ import annotations

import hashlib
from typing import Any

from shared.sshwire.sftp import FileTransferred, ObserverStopped, SftpEvent

MAX_LINE = 4096


class ScpObserver:
    def __init__(self, upload: bool) -> None:
        self.upload = upload
        self._buf = bytearray()
        self._dirs: list[str] = []
        self._file: tuple[str, int] | None = None  # path, size
        self._left = 0
        self._hasher: Any = None
        self._need_nul = False
        self.broken: str | None = None

    def data(self, data: bytes) -> list[SftpEvent]:
        if self.broken is not None:
            return []
        events: list[SftpEvent] = []
        view = memoryview(data)
        try:
            while view:
                if self._file is not None and self._left:
                    take = view[: self._left]
                    self._hasher.update(take)
                    self._left -= len(take)
                    view = view[len(take) :]
                    continue
                if self._file is not None:
                    if view[0] != 0:
                        raise ValueError("file data not followed by NUL")
                    path, size = self._file
                    up, down = (size, 0) if self.upload else (0, size)
                    events.append(FileTransferred(path, up, down, self._hasher.hexdigest()))
                    self._file = None
                    view = view[1:]
                    continue
                end = bytes(view).find(b"\n")
                if end < 0:
                    self._buf += view
                    if len(self._buf) > MAX_LINE:
                        raise ValueError("control line too long")
                    break
                line = bytes(self._buf) + bytes(view[:end])
                self._buf.clear()
                view = view[end + 1 :]
                self._control(line.decode("utf-8", "replace"))
        except ValueError as exc:
            self.broken = str(exc)
            events.append(ObserverStopped(f"unreadable scp traffic: {exc}"))
        return events

    def _control(self, line: str) -> None:
        if not line:
            raise ValueError("empty control line")
        kind = line[0]
        if kind == "T" or kind in "\x01\x02":
            return
        if kind == "E":
            if self._dirs:
                self._dirs.pop()
            return
        parts = line[1:].split(" ", 2)
        if kind not in "CD" or len(parts) != 3 or not parts[1].isdigit():
            raise ValueError(f"unexpected control line {line[:40]!r}")
        name = "/".join([*self._dirs, parts[2]])
        if kind == "D":
            self._dirs.append(parts[2])
            return
        self._file = (name, int(parts[1]))
        self._left = int(parts[1])
        self._hasher = hashlib.sha256()
