"""Admission to the public port: how many connections may be unauthenticated at once.

Rules this module keeps (sans-I/O: no sockets, no clock of its own):

- A connection is *unauthenticated* from accept until its protocol handler says the client
  authenticated (PostgreSQL: password checked; SSH: userauth succeeded; HTTP and Kubernetes:
  the first request arrived), or until it closes, whichever comes first. Released once.
- At most `total` connections are unauthenticated at once, and at most `per_address` from
  one client address: an IPv4 address, or an IPv6 /64 (one host's usual allocation, so an
  attacker cannot dodge the limit by cycling the low 64 bits). IPv4-mapped IPv6 addresses
  count as their IPv4 address.
- An accept over either limit is refused before anything is read: the caller closes it.
- `LogCap` lets a warning through at most once per interval and says how many it held back,
  so an attacker cannot make the gateway write a line per connection.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field


class Refusal(enum.Enum):
    PER_ADDRESS = "per_address"
    TOTAL = "total"


def address_key(host: str) -> str:
    """The unit the per-address limit counts: the IPv4 address, or the IPv6 /64."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host  # not an IP (a Unix socket path, say): counted as itself
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


@dataclass
class Ticket:
    """One admitted connection; `release()` (idempotent) gives its place back."""

    key: str
    _admissions: Admissions
    _released: bool = False
    on_release: list[Callable[[], None]] = field(default_factory=list)

    @property
    def released(self) -> bool:
        return self._released

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        self._admissions._give_back(self.key)
        for callback in self.on_release:
            callback()


class Admissions:
    def __init__(self, *, total: int, per_address: int) -> None:
        self.total = total
        self.per_address = per_address
        self._open: dict[str, int] = {}
        self._count = 0

    @property
    def open(self) -> int:
        return self._count

    def open_from(self, key: str) -> int:
        return self._open.get(key, 0)

    def admit(self, host: str) -> Ticket | Refusal:
        key = address_key(host)
        if self._count >= self.total:
            return Refusal.TOTAL
        if self._open.get(key, 0) >= self.per_address:
            return Refusal.PER_ADDRESS
        self._open[key] = self._open.get(key, 0) + 1
        self._count += 1
        return Ticket(key, self)

    def _give_back(self, key: str) -> None:
        left = self._open[key] - 1
        if left:
            self._open[key] = left
        else:
            del self._open[key]  # the table holds only addresses with open connections
        self._count -= 1


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
