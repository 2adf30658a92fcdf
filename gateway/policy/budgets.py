"""Exfiltration budgets: how many rows and bytes one identity may take from a connection a day.

Pure and sans-I/O. The policy's ``budgets:`` list says who (the identity and connection
conditions of a guardrail ``Match``, same semantics) may read how much per UTC day; the
gateway keeps the usage in the store per (user, connection, budget, day). The rules it keeps:

1. A budget *applies* to a session when every identity/connection condition it has matches
   (rule 1 of ``gateway.policy.rules``). Each applicable budget is counted separately, so
   the strictest one stops first.
2. Usage is what the client received: rows are DataRows forwarded, bytes are every byte of
   the server's answers forwarded after startup (row descriptions, rows, COPY data, tags).
3. A budget is *exhausted* when the day's usage (the store's total as last read plus what
   this session has not flushed yet) reached a limit. A new statement on an exhausted budget
   is refused by the gateway with SQLSTATE 53400 (configuration_limit_exceeded) naming it.
4. A running result is stopped before the first DataRow (or CopyData) the budget has no room
   for (``stop_offset``): past the rows limit, or starting when the bytes limit is reached.
   So the client gets exactly the rows the limit leaves, and the bytes limit plus less than
   one row (the row that reaches it) and the closing messages; either way the budget is then
   exhausted, for every session and replica that reads the store.
   From there on (``ResultStopper``) the gateway drops the server's rows, answers the
   statement with the same 53400 error in place of its CommandComplete or ErrorResponse,
   drops whatever else the server says for that batch and passes the ReadyForQuery, so the
   wire stays valid. The server is asked to cancel meanwhile so it stops producing. A result
   that ends exactly at the limit is not stopped; the next statement is refused.
5. ``on_exceed: review`` (with a ``review:`` block, the terms of ``gateway.policy.approval``)
   holds a new statement on an exhausted budget for approval instead of refusing it; once
   approved, that statement runs and its result is not cut by the budgets its approval
   covers (``BudgetMeter.waive``; it is still counted). A budget that stops wins over one
   that asks: with both exhausted, the statement is refused. A result that crosses a review
   budget's limit while it runs is still stopped (rule 4): a running result cannot be held.
"""

from __future__ import annotations

import datetime as dt
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway.policy.approval import ReviewTerms
from gateway.policy.who import Subject, WhoMatch

BUDGET_SQLSTATE = "53400"  # configuration_limit_exceeded: a limit the operator set was reached
_HEADER = struct.Struct("!cI")


class BudgetMatch(WhoMatch):
    """Who a budget counts: the identity and connection conditions of a guardrail `Match`."""


class Budget(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(min_length=1, max_length=100)
    match: BudgetMatch = Field(default_factory=BudgetMatch)  # whose reads it counts, where
    rows_per_day: int | None = Field(default=None, gt=0)  # per user, connection, UTC day
    bytes_per_day: int | None = Field(default=None, gt=0)  # of the server's answers
    on_exceed: Literal["stop", "review"] = "stop"  # refuse, or hold for approval
    review: ReviewTerms | None = None  # on_exceed review: who approves, how many, how long

    @model_validator(mode="after")
    def _limited(self) -> Budget:
        if self.rows_per_day is None and self.bytes_per_day is None:
            raise ValueError(f"budget {self.name!r} needs rows_per_day and/or bytes_per_day")
        if (self.on_exceed == "review") != (self.review is not None):
            raise ValueError(
                f"budget {self.name!r}: a `review:` block goes with `on_exceed: review`, "
                "and only there"
            )
        return self

    def over(self, rows: int, nbytes: int) -> Literal["rows", "bytes"] | None:
        """Which limit (rows or bytes) the usage reached, or None."""
        if self.rows_per_day is not None and rows >= self.rows_per_day:
            return "rows"
        if self.bytes_per_day is not None and nbytes >= self.bytes_per_day:
            return "bytes"
        return None


def applicable(budgets: Iterable[Budget], subject: Subject, connection: str) -> tuple[Budget, ...]:
    return tuple(b for b in budgets if b.match.applies(subject, connection))


def utc_day(now: dt.datetime) -> dt.date:
    return now.astimezone(dt.UTC).date()


@dataclass(frozen=True, slots=True)
class Usage:
    rows: int = 0
    bytes: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(self.rows + other.rows, self.bytes + other.bytes)


@dataclass(frozen=True, slots=True)
class Exceeded:
    """A budget reached: which one, which limit, and the usage that reached it."""

    budget: Budget
    limit: Literal["rows", "bytes"]
    usage: Usage

    @property
    def message(self) -> str:
        b = self.budget
        cap = b.rows_per_day if self.limit == "rows" else b.bytes_per_day
        return (
            f"exfiltration budget {b.name!r} exhausted: {self.usage.rows} rows and "
            f"{self.usage.bytes} bytes today (limit {cap} {self.limit} per day)"
        )


class BudgetMeter:
    """The budgets of one session: the day's usage as last read, plus what is not flushed.

    The caller reads the store's totals into `load`, feeds what the client received to `add`,
    moves `take_pending` to the store (atomic increments) and `load`s the totals that returns.
    """

    def __init__(self, budgets: Sequence[Budget], clock: Callable[[], dt.datetime]) -> None:
        self.budgets = tuple(budgets)
        # Rule 5: a budget that stops is reported before one that asks for review.
        self._by_severity = tuple(sorted(self.budgets, key=lambda b: b.on_exceed == "review"))
        self._clock = clock
        self.day = utc_day(clock())
        self._stored: dict[str, Usage] = {}
        self._pending: dict[tuple[dt.date, str], Usage] = {}
        self._reported: set[tuple[dt.date, str]] = set()  # exceeds already announced
        self.waived: frozenset[str] = frozenset()  # budgets an approval lets a result pass

    def _roll(self) -> None:
        today = utc_day(self._clock())
        if today != self.day:  # a new day starts from nothing; the old day's pending stays
            self.day = today
            self._stored = {}

    def load(self, totals: Mapping[str, Usage], day: dt.date) -> None:
        """The store's totals for `day` (they include everything already flushed)."""
        if day == self.day:
            self._stored = dict(totals)

    def used(self, name: str) -> Usage:
        self._roll()
        return self._stored.get(name, Usage()) + self._pending.get((self.day, name), Usage())

    def exhausted(self) -> Exceeded | None:
        """The first budget already at a limit today, or None; one that stops comes before
        one that asks for review (rule 5: refusing wins)."""
        for budget in self._by_severity:
            usage = self.used(budget.name)
            limit = budget.over(usage.rows, usage.bytes)
            if limit is not None:
                return Exceeded(budget, limit, usage)
        return None

    def asking(self) -> tuple[str, ...]:
        """The exhausted budgets that ask for review (`on_exceed: review`)."""
        out = []
        for budget in self.budgets:
            usage = self.used(budget.name)
            if budget.on_exceed == "review" and budget.over(usage.rows, usage.bytes):
                out.append(budget.name)
        return tuple(out)

    def add(self, rows: int, nbytes: int) -> Exceeded | None:
        """Count what the client received; returns a budget this crossed (once per day)."""
        if not rows and not nbytes:
            return None
        self._roll()
        crossed: Exceeded | None = None
        delta = Usage(rows, nbytes)
        for budget in self.budgets:
            key = (self.day, budget.name)
            self._pending[key] = self._pending.get(key, Usage()) + delta
            usage = self.used(budget.name)
            limit = budget.over(usage.rows, usage.bytes)
            if limit is not None and key not in self._reported and crossed is None:
                self._reported.add(key)
                crossed = Exceeded(budget, limit, usage)
        return crossed

    def waive(self, names: Iterable[str]) -> None:
        """An approved statement runs past these budgets (rule 5) until `unwaive`."""
        self.waived = frozenset(names)

    def unwaive(self) -> None:
        self.waived = frozenset()

    def remaining(self) -> tuple[int | None, int | None]:
        """(rows, bytes) the tightest budgets not waived still allow today; None: no such
        limit."""
        rows: int | None = None
        nbytes: int | None = None
        for budget in self.budgets:
            if budget.name in self.waived:
                continue
            used = self.used(budget.name)
            if budget.rows_per_day is not None:
                left = budget.rows_per_day - used.rows
                rows = left if rows is None else min(rows, left)
            if budget.bytes_per_day is not None:
                left = budget.bytes_per_day - used.bytes
                nbytes = left if nbytes is None else min(nbytes, left)
        return rows, nbytes

    @property
    def pending(self) -> bool:
        return bool(self._pending)

    def take_pending(self) -> dict[tuple[dt.date, str], Usage]:
        """What to add to the store; gone from here (give it back with `restore` on failure)."""
        pending, self._pending = self._pending, {}
        # Until the caller loads the new totals, count the flushed part as stored.
        for (day, name), usage in pending.items():
            if day == self.day:
                self._stored[name] = self._stored.get(name, Usage()) + usage
        return pending

    def adopt(self, pending: Mapping[tuple[dt.date, str], Usage]) -> None:
        """Take over another meter's unflushed usage (the policy changed mid-session)."""
        for key, usage in pending.items():
            self._pending[key] = self._pending.get(key, Usage()) + usage

    def restore(self, pending: Mapping[tuple[dt.date, str], Usage]) -> None:
        """Put back what a failed flush took, so it is counted at the next one."""
        for (day, name), usage in pending.items():
            if day == self.day:
                self._stored[name] = self._stored.get(name, Usage()) + Usage(
                    -usage.rows, -usage.bytes
                )
            key = (day, name)
            self._pending[key] = self._pending.get(key, Usage()) + usage


_DATA = frozenset(b"Dd")  # DataRow, CopyData
_MIN_ROW = 7  # the smallest DataRow: type, length, column count


def stop_offset(
    data: bytes, partial: tuple[bytes, int], rows_left: int | None, bytes_left: int | None
) -> int | None:
    """Rule 4: the offset in `data` of the first DataRow or CopyData the budget has no room
    for, or None when this chunk stays within it.

    `partial` is `PgTracker.partial` before `data`: the message the stream is inside of goes
    through whole (its start reached the client already), so it is counted, never cut.
    """
    n = len(data)
    # Rows that start in `data`: whole ones, and one whose header the chunk cuts short.
    if (rows_left is None or -(-n // _MIN_ROW) <= rows_left) and (
        bytes_left is None or n <= bytes_left
    ):
        return None  # cannot hold a row or a byte too many: no need to scan
    carry, skip = partial
    pre = len(carry)
    buf = carry + data if carry else data
    total = len(buf)
    pos = min(skip, total)
    rows = 0
    while pos < total:
        code = buf[pos]
        if code in _DATA:
            if code == 68:
                rows += 1
            past = (rows_left is not None and code == 68 and rows > rows_left) or (
                bytes_left is not None and pos - pre >= bytes_left
            )
            if past and pos >= pre:
                return pos - pre
        if pos + 5 > total:
            # A header cut short: its type byte is enough to stop it, and what it turns out
            # to be otherwise is the next chunk's business (it starts in the carry).
            break
        pos += 1 + _HEADER.unpack_from(buf, pos)[1]
    return None


class ResultStopper:
    """Rule 4: ends the running answer of a stopped statement, keeping the wire valid.

    Fed the server's byte stream from a message boundary on; returns what the client gets.
    DataRows, row descriptions, COPY data and every other answer are dropped, the first
    completion (CommandComplete, ErrorResponse, EmptyQueryResponse, PortalSuspended) becomes
    `error`, asynchronous messages (notices, notifications, parameter changes) pass, and at
    ReadyForQuery the stopper is `done` and passes everything after it unchanged. The bodies
    of dropped messages are skipped as they stream, never buffered.
    """

    _ASYNC = frozenset(b"NAS")
    _COMPLETION = frozenset(b"CEIs")

    def __init__(self, error: bytes, *, partial: tuple[bytes, int] = (b"", 0)) -> None:
        """`partial`: the message the stream is inside of, as `PgTracker.partial` says; the
        client has its first bytes already, so it goes through whole."""
        self._error = error
        self._replaced = False
        self._carry, self._pass = partial
        self._sent = len(self._carry)  # bytes of the carried message the client already has
        self._drop = 0
        self.done = False
        self.dropped_rows = 0
        self.injected = 0  # bytes of `error` put in the stream: the gateway's, not the server's

    def feed(self, data: bytes) -> bytes:
        if self.done:
            return data
        buf = self._carry + data if self._carry else data
        self._carry = b""
        out: list[bytes] = []
        i, n = 0, len(buf)
        while i < n:
            if self._drop:
                step = min(self._drop, n - i)
                self._drop -= step
                i += step
                continue
            if self._pass:
                step = min(self._pass, n - i)
                out.append(buf[i : i + step])
                self._pass -= step
                i += step
                continue
            if n - i < 5:
                self._carry = buf[i:]
                break
            kind, length = _HEADER.unpack_from(buf, i)
            size = 1 + length
            code = kind[0]
            if self._sent:  # started before the stop: finish it
                if code == 90:  # the batch had ended already: nothing to stop
                    out.append(buf[i + self._sent :])
                    self.done = True
                    break
                self._pass = size - self._sent
                i += self._sent
                self._sent = 0
                continue
            if code == 90:  # 'Z' ReadyForQuery: the batch is over, the rest is the client's
                # Without a completion since the stop the statement had ended already: the
                # client got its answer (the overshoot), and nothing is to be replaced.
                out.append(buf[i:])
                self.done = True
                break
            if code in self._ASYNC:
                self._pass = size
                continue
            if code == 68:  # 'D'
                self.dropped_rows += 1
            elif code in self._COMPLETION and not self._replaced:
                out.append(self._error)
                self.injected += len(self._error)
                self._replaced = True
            self._drop = size
        return b"".join(out)
