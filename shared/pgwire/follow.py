"""Tie each result the server sends to the statement that asked for it (sans-I/O).

Two halves, both driven by the agent's PostgreSQL relay:

* `ClientFrames.feed(bytes)` reads the client's messages as they go to the server and
  returns the ones that decide results (Query, Parse, Bind, Describe, Execute, Close, Sync);
  the rest (CopyData of a COPY FROM, Flush, ...) are skipped unread, never held.
* `ResultUnits` is the queue of answers the server owes, in order, each with the
  `StatementMask` of its statement. `ResultMasker` moves it along with the server's
  messages and asks `current()` for the mask of each RowDescription, run of DataRows and
  CopyOutResponse:
  - a simple Query owes one result per statement: CommandComplete or EmptyQueryResponse
    moves to the next statement; an ErrorResponse skips the rest; ReadyForQuery ends it;
  - Describe owes one RowDescription or NoData (after ParameterDescription for a
    statement); Execute owes DataRows ending in CommandComplete, EmptyQueryResponse or
    PortalSuspended (the portal's next Execute owes the rest, with the same mask);
  - after an ErrorResponse in the extended protocol the server skips to Sync: what was
    owed before the Sync is dropped; Sync owes the ReadyForQuery.
  Anything else (no unit owed, a result the queue did not expect) gets `UNRESOLVED`:
  every covered column masked whole (fail closed).
"""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass

from shared.masking.lineage import UNRESOLVED, StatementMask

_HEAD = struct.Struct("!cI")
_WANTED = frozenset(b"QPBDECS")
MAX_CLIENT_MESSAGE = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class ClientMessage:
    """A client message that decides results: `kind` is its type letter; `name` the
    statement or portal (for Describe/Close prefixed by S or P); `text` the SQL of Query and
    Parse; `target` the statement a Bind binds."""

    kind: str
    name: str = ""
    text: str = ""
    target: str = ""


def _cstr(body: bytes, pos: int) -> tuple[str, int]:
    end = body.index(b"\0", pos)
    return body[pos:end].decode("utf-8", "surrogateescape"), end + 1


class ClientFrames:
    def __init__(self) -> None:
        self._buf = bytearray()
        self._skip = 0

    def feed(self, data: bytes) -> list[ClientMessage]:
        out: list[ClientMessage] = []
        pos = 0
        n = len(data)
        if self._skip:
            pos = min(self._skip, n)
            self._skip -= pos
        if self._buf:
            self._buf += data[pos:]
            data, pos, n = bytes(self._buf), 0, len(self._buf)
            self._buf.clear()
        while n - pos >= 5:
            type_, length = _HEAD.unpack_from(data, pos)
            if length < 4 or length > MAX_CLIENT_MESSAGE:
                raise ValueError(f"client message of impossible length {length}")
            total = length + 1
            if type_[0] not in _WANTED:
                take = min(total, n - pos)
                pos += take
                self._skip = total - take
                continue
            if n - pos < total:
                break
            out.append(_decode(type_, data[pos + 5 : pos + total]))
            pos += total
        if pos < n:
            self._buf += data[pos:]
        return out


def _decode(type_: bytes, body: bytes) -> ClientMessage:
    kind = type_.decode()
    if kind == "Q":
        return ClientMessage("Q", text=_cstr(body, 0)[0])
    if kind == "P":
        name, pos = _cstr(body, 0)
        return ClientMessage("P", name, _cstr(body, pos)[0])
    if kind == "B":
        portal, pos = _cstr(body, 0)
        return ClientMessage("B", portal, target=_cstr(body, pos)[0])
    if kind in "DC":
        return ClientMessage(kind, chr(body[0]) + _cstr(body, 1)[0])
    if kind == "E":
        return ClientMessage("E", _cstr(body, 0)[0])
    return ClientMessage("S")


@dataclass
class _Unit:
    kind: str  # query | describe | execute | sync
    masks: tuple[StatementMask, ...]
    index: int = 0


class ResultUnits:
    def __init__(self) -> None:
        self._units: deque[_Unit] = deque()

    def __len__(self) -> int:
        return len(self._units)

    # ---- what the client asked (in order) ----------------------------------------------

    def query(self, masks: tuple[StatementMask, ...]) -> None:
        self._units.append(_Unit("query", masks))

    def describe(self, mask: StatementMask) -> None:
        self._units.append(_Unit("describe", (mask,)))

    def execute(self, mask: StatementMask) -> None:
        self._units.append(_Unit("execute", (mask,)))

    def sync(self) -> None:
        self._units.append(_Unit("sync", ()))

    # ---- what the server answers -------------------------------------------------------

    def current(self) -> StatementMask:
        """The mask of the result the server is sending now."""
        if not self._units:
            return UNRESOLVED
        unit = self._units[0]
        if unit.index < len(unit.masks):
            return unit.masks[unit.index]
        return UNRESOLVED

    def server(self, type_: bytes) -> None:
        """Move along with one server message (T n C I s E Z; others do not move it)."""
        units = self._units
        if not units:
            return
        unit = units[0]
        if type_ in (b"T", b"n"):
            if unit.kind == "describe":
                units.popleft()
        elif type_ in (b"C", b"I"):
            if unit.kind == "query":
                unit.index += 1
            elif unit.kind == "execute":
                units.popleft()
        elif type_ == b"s":
            if unit.kind == "execute":
                units.popleft()
        elif type_ == b"E":
            if unit.kind == "query":
                unit.index = len(unit.masks)  # the rest of the string does not run
            else:
                while units and units[0].kind not in ("sync", "query"):
                    units.popleft()  # the server skips to Sync
        elif type_ == b"Z":
            while units:
                head = units.popleft()
                if head.kind in ("sync", "query"):
                    break
