"""Admission to the public port: how many connections may be unauthenticated at once.

Rules this module keeps (sans-I/O: no sockets, no clock of its own):

- A connection is *unauthenticated* from accept until its protocol handler says the client
  authenticated (PostgreSQL: password checked; SSH: userauth succeeded; HTTP and Kubernetes:
  the first request arrived), or until it closes, whichever comes first. Released once.
- At most `per_address` connections from one client address are unauthenticated at once:
  an IPv4 address, or an IPv6 /64 (one host's usual allocation, so an attacker cannot dodge
  the limit by cycling the low 64 bits). IPv4-mapped IPv6 addresses count as their IPv4
  address. An accept over it is refused before anything is read: the caller closes it.
- At most `total` are unauthenticated at once in all. An accept over it evicts the *oldest*
  unauthenticated connection instead of being refused: a client logs in within a fraction
  of a second, so the oldest is a slow one, and refusing the newest would let a patient
  attacker spread over `total / per_address` addresses lock every new client out.
- `LogCap` lets a warning through at most once per interval and says how many it held back,
  so an attacker cannot make the gateway write a line per connection.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.ratelimit import address_key


class Refusal(enum.Enum):
    PER_ADDRESS = "per_address"


@dataclass(eq=False)
class Ticket:
    """One admitted connection; `release()` (idempotent) gives its place back. Evicted, it
    is released and `on_evict` is called: its connection is to be closed."""

    key: str
    _admissions: Admissions
    _released: bool = False
    evicted: bool = False
    on_evict: list[Callable[[], None]] = field(default_factory=list)

    @property
    def released(self) -> bool:
        return self._released

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        self._admissions._give_back(self)

    def _evict(self) -> None:
        self.evicted = True
        self.release()
        for callback in self.on_evict:
            callback()


class Admissions:
    def __init__(self, *, total: int, per_address: int) -> None:
        self.total = total
        self.per_address = per_address
        self._open: dict[str, int] = {}
        self._tickets: dict[Ticket, None] = {}  # unreleased, oldest first

    @property
    def open(self) -> int:
        return len(self._tickets)

    def open_from(self, key: str) -> int:
        return self._open.get(key, 0)

    def admit(self, host: str) -> tuple[Ticket, Ticket | None] | Refusal:
        """The new connection's ticket and the one evicted to make room for it, if any."""
        key = address_key(host)
        if self._open.get(key, 0) >= self.per_address:
            return Refusal.PER_ADDRESS
        evicted = None
        if len(self._tickets) >= self.total:
            evicted = next(iter(self._tickets))
            evicted._evict()
        ticket = Ticket(key, self)
        self._tickets[ticket] = None
        self._open[key] = self._open.get(key, 0) + 1
        return ticket, evicted

    def _give_back(self, ticket: Ticket) -> None:
        del self._tickets[ticket]
        left = self._open[ticket.key] - 1
        if left:
            self._open[ticket.key] = left
        else:
            del self._open[ticket.key]  # the table holds only addresses with open connections


class LogCap:
    """At most one line per `interval` seconds; `due(now)` says whether to write one now and
    how many were held back since the last line (to be said in it)."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._next = float("-inf")
        self._held = 0

    def due(self, now: float) -> int | None:
        if now < self._next:
            self._held += 1
            return None
        held, self._held = self._held, 0
        self._next = now + self.interval
        return held
