"""Follow one PostgreSQL session in both directions to record its statements (sans-I/O).

Rules:
1. A statement is recorded when it is about to run: each statement of a simple Query (split
   by PostgreSQL's own scanner) when the client sends it; an extended-protocol statement at
   Execute, with the text Parse gave its prepared statement and the parameter count Bind
   gave its portal. The caller writes the `StatementStarted` durably and only then forwards
   the message.
2. Server messages are scanned, not decoded: only the type byte and length of each message
   are read, plus the bodies of CommandComplete, ErrorResponse and ReadyForQuery, so a
   multi-gigabyte result costs one header read per row and no copies.
3. Completion: a simple Query completes at ReadyForQuery; its statements get the command tags
   in order, the first without one carries the error, the rest did not run. An Execute
   completes at its CommandComplete, EmptyQueryResponse, PortalSuspended or ErrorResponse.
   After an error the server skips to Sync, so Executes still pending at ReadyForQuery did
   not run and complete as `skipped`.
4. Rows are counted from DataRow messages, so SELECT and FETCH count what the client got.
5. A FATAL or PANIC ErrorResponse, whatever it answers (it may come unasked, as for
   idle_in_transaction_session_timeout), is kept as `ended_by`: the server closes the
   connection after it, and that is why the session ended.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import pglast

_HEADER = struct.Struct("!cI")
# CommandComplete, ErrorResponse, ReadyForQuery, EmptyQueryResponse, PortalSuspended
_INTERESTING = frozenset(b"CEZIs")
_ENDING = frozenset(("FATAL", "PANIC"))  # severities after which the server closes


@dataclass(frozen=True, slots=True)
class StatementStarted:
    index: int  # position in this session, 1-based
    text: str
    protocol: str  # "simple" | "extended"
    params: int = 0
    statement: str = ""  # prepared statement name ("" for unnamed)
    # Parameter values, only when the connection's policy records them: text as sent,
    # binary as \x-hex, NULL as None.
    values: tuple[str | None, ...] | None = None


@dataclass(frozen=True, slots=True)
class StatementFinished:
    index: int
    tags: tuple[str, ...]
    rows: int
    duration_ms: float
    sqlstate: str | None = None
    error: str | None = None
    skipped: bool = False


@dataclass(frozen=True, slots=True)
class ServerEnded:
    """The server's last word before it closed the session (rule 5)."""

    sqlstate: str
    message: str

    def __str__(self) -> str:
        return f"{self.sqlstate} {self.message}"


@dataclass
class _Unit:
    index: int
    protocol: str
    started: float
    rows: int = 0
    tags: list[str] = field(default_factory=list)
    sqlstate: str | None = None
    error: str | None = None
    count: int = 1  # statements of a simple Query: indexes index .. index + count - 1
    rows_at_tag: list[int] = field(default_factory=list)  # rows counted when each tag came


def split_statements(text: str) -> list[str]:
    """The statements of a simple Query, split by PostgreSQL's own scanner.

    Text that does not split (a syntax error the server will report) stays one statement.
    """
    if ";" not in text.strip().rstrip(";"):
        return [text]
    try:
        parts = [p for p in pglast.split(text) if p.strip()]
    except Exception:  # pglast raises several types on text PostgreSQL would reject
        return [text]
    return parts or [text]


def _error_fields(body: bytes) -> dict[str, str]:
    fields: dict[str, str] = {}
    for part in body.split(b"\0"):
        if part:
            fields[chr(part[0])] = part[1:].decode("utf-8", "replace")
    return fields


def render_params(
    params: tuple[bytes | None, ...], formats: tuple[int, ...]
) -> tuple[str | None, ...]:
    out: list[str | None] = []
    for i, value in enumerate(params):
        fmt = formats[0] if len(formats) == 1 else formats[i] if i < len(formats) else 0
        if value is None:
            out.append(None)
        elif fmt == 0:
            out.append(value.decode("utf-8", "replace"))
        else:
            out.append("\\x" + value.hex())
    return tuple(out)


class PgTracker:
    def __init__(self, clock: Callable[[], float], *, record_params: bool = False) -> None:
        self._clock = clock
        self._record_params = record_params
        self._count = 0
        self._statements: dict[str, str] = {}  # prepared name -> text
        # portal -> (statement name, text, parameter count, rendered values or None)
        self._portals: dict[str, tuple[str, str, int, tuple[str | None, ...] | None]] = {}
        self._units: deque[_Unit] = deque()
        # server-direction scanner state
        self._carry = b""
        self._skip = 0
        self.tx_status = "I"  # from the last ReadyForQuery: I idle, T in a block, E failed
        self.rows_total = 0  # DataRows seen in this session (exfiltration budgets count them)
        self.ended_by: ServerEnded | None = None  # rule 5

    @property
    def idle(self) -> bool:
        """Everything sent has been answered and the server stream is at a message boundary."""
        return not self._units and not self._carry and not self._skip

    @property
    def partial(self) -> tuple[bytes, int]:
        """Where the scan stopped inside a message: (its first bytes, bytes still to come).

        Both are empty/0 at a message boundary; a filter taking over the stream from here
        must let the rest of this message through.
        """
        return self._carry, self._skip

    # ---- client -> server ------------------------------------------------------------

    def query(self, text: str) -> list[StatementStarted]:
        """One started statement per statement of the Query string (rule 1)."""
        statements = split_statements(text)
        first = self._count + 1
        self._count += len(statements)
        self._units.append(_Unit(first, "simple", self._clock(), count=len(statements)))
        return [StatementStarted(first + i, st, "simple") for i, st in enumerate(statements)]

    def parse(self, name: str, text: str) -> None:
        self._statements[name] = text

    def bind(
        self,
        portal: str,
        statement: str,
        params: tuple[bytes | None, ...],
        formats: tuple[int, ...] = (),
    ) -> None:
        values = render_params(params, formats) if self._record_params else None
        self._portals[portal] = (
            statement,
            self._statements.get(statement, ""),
            len(params),
            values,
        )

    def sync(self) -> None:
        """Sync ends a batch: its ReadyForQuery closes the Executes before it."""
        self._units.append(_Unit(0, "sync", self._clock()))

    def close(self, kind: str, name: str) -> None:
        (self._statements if kind == "S" else self._portals).pop(name, None)

    def execute(self, portal: str) -> StatementStarted:
        statement, text, params, values = self._portals.get(portal, ("", "", 0, None))
        self._count += 1
        self._units.append(_Unit(self._count, "extended", self._clock()))
        return StatementStarted(self._count, text, "extended", params, statement, values)

    # ---- server -> client ------------------------------------------------------------

    def server_data(self, data: bytes) -> list[StatementFinished]:
        """Scan a chunk of the server's byte stream; returns statements that completed."""
        done: list[StatementFinished] = []
        view = memoryview(data)
        i = 0
        n = len(view)
        if self._skip:
            i = min(self._skip, n)
            self._skip -= i
            if i == n:
                return done
        if self._carry:
            view = memoryview(self._carry + bytes(view[i:]))
            self._carry = b""
            i = 0
            n = len(view)
        header = _HEADER
        while i < n:
            if n - i < 5:
                self._carry = bytes(view[i:])
                break
            kind, length = header.unpack_from(view, i)
            end = i + 1 + length
            code = kind[0]
            if code == 68:  # 'D' DataRow: the hot path
                self.rows_total += 1
                if self._units:
                    self._units[0].rows += 1
            elif code in _INTERESTING:
                if end > n:
                    self._carry = bytes(view[i:])
                    break
                self._on_message(code, bytes(view[i + 5 : end]), done)
            if end > n:
                self._skip = end - n
                break
            i = end
        return done

    def _on_message(self, code: int, body: bytes, done: list[StatementFinished]) -> None:
        fields = _error_fields(body) if code == 69 else {}
        # V is the severity never localized (PostgreSQL 9.6+); S the one that may be.
        if fields.get("V", fields.get("S")) in _ENDING:
            self.ended_by = ServerEnded(fields.get("C", ""), fields.get("M", "")[:200])
        unit = self._units[0] if self._units else None
        if unit is not None and unit.protocol == "sync" and code != 90:
            return  # an answer after Sync but before ReadyForQuery belongs to nobody
        if code in (73, 115):  # 'I' EmptyQueryResponse, 's' PortalSuspended
            if unit is not None and unit.protocol == "extended":
                done.append(self._finish(self._units.popleft()))
        elif code == 67:  # 'C' CommandComplete
            if unit is None:
                return
            unit.tags.append(body.rstrip(b"\0").decode("utf-8", "replace"))
            unit.rows_at_tag.append(unit.rows)
            if unit.protocol == "extended":
                done.append(self._finish(self._units.popleft()))
        elif code == 69:  # 'E' ErrorResponse
            if unit is None:
                return
            unit.sqlstate = fields.get("C")
            unit.error = fields.get("M", "")[:200]
            if unit.protocol == "extended":
                done.append(self._finish(self._units.popleft()))
        elif code == 90:  # 'Z' ReadyForQuery
            if body[:1] in (b"I", b"T", b"E"):
                self.tx_status = body[:1].decode()
            while self._units:
                head = self._units.popleft()
                if head.protocol == "sync":
                    break
                if head.protocol == "simple":
                    done.extend(self._finish_query(head))
                    break
                done.append(self._finish(head, skipped=True))

    def _finish_query(self, unit: _Unit) -> list[StatementFinished]:
        """Split a simple Query's outcome over its statements, in order: each completed one
        has its tag and rows; the first without a tag carries the error; the rest never ran.
        """
        duration = round((self._clock() - unit.started) * 1000, 3)
        out: list[StatementFinished] = []
        before = 0
        for i in range(unit.count):
            if i < len(unit.tags):
                rows = unit.rows_at_tag[i] - before
                before = unit.rows_at_tag[i]
                out.append(StatementFinished(unit.index + i, (unit.tags[i],), rows, duration))
            elif i == len(unit.tags) and (unit.sqlstate is not None or unit.count == 1):
                out.append(
                    StatementFinished(
                        unit.index + i,
                        (),
                        unit.rows - before,
                        duration,
                        unit.sqlstate,
                        unit.error,
                    )
                )
            else:
                out.append(StatementFinished(unit.index + i, (), 0, duration, skipped=True))
        return out

    def _finish(self, unit: _Unit, *, skipped: bool = False) -> StatementFinished:
        return StatementFinished(
            index=unit.index,
            tags=tuple(unit.tags),
            rows=unit.rows,
            duration_ms=round((self._clock() - unit.started) * 1000, 3),
            sqlstate=unit.sqlstate,
            error=unit.error,
            skipped=skipped and not unit.tags and unit.sqlstate is None,
        )
