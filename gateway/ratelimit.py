"""Rate limits of sign-in attempts: the rules, the sliding-window arithmetic, the keys. Pure.

Rules this module keeps (the store applies them in one transaction per attempt, so they hold
across every gateway member sharing the store):

1. An attempt is charged before it is tried, to every key it names: its client address and,
   when it claims one, the identity (a local user's name: a password can be guessed from
   many addresses). Charging first means a burst of concurrent attempts cannot all pass a check
   made before any of them failed.
2. A key's count is a sliding-window estimate from two fixed windows: the current window's
   attempts plus the previous window's, weighted by the share of the previous window still
   inside the sliding one. It never lets more than the limit through in any window length,
   and its storage is two counters per key.
3. An attempt that would take any of its keys over the limit is refused (429) and charged to
   none; its keys count it as refused, for the audit log.
4. What is not a failure is given back: a success refunds its address and clears its
   identity's counts; a device flow still pending refunds both. Failures stay charged (an
   IdP outage's too: each wrote an audit event), so the limits count failures.
5. Retry-After is the time until an attempt would pass again, if nothing else is charged.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import math
from dataclasses import dataclass
from typing import Literal, Protocol

Kind = Literal["address", "identity"]

LABEL_MAX = 200  # a key's readable form in the audit log (a claimed identity is input)


@dataclass(frozen=True, slots=True)
class Rule:
    """At most `attempts` failed attempts per `window` seconds."""

    attempts: int
    window: float


@dataclass(frozen=True, slots=True)
class Key:
    """One counter: its kind, a digest that names it in the store, a label for the audit log."""

    kind: Kind
    digest: str
    label: str

    @classmethod
    def of(cls, kind: Kind, text: str) -> Key:
        digest = hashlib.sha256(f"{kind}\0{text}".encode()).hexdigest()
        label = "".join(c if c.isprintable() else "?" for c in text[:LABEL_MAX])
        return cls(kind, digest, label)


@dataclass(frozen=True, slots=True)
class Charge:
    """A key an attempt is charged to, with the rule that bounds it."""

    key: Key
    rule: Rule


@dataclass(frozen=True, slots=True)
class Refusal:
    """The key that refused an attempt, how long to wait, and whether this refusal is the
    first of its window (only that one is written to the audit log as it happens)."""

    key: Key
    rule: Rule
    retry_after: int
    first: bool


@dataclass(frozen=True, slots=True)
class Limited:
    """A refusal for the client, in its protocol: HTTP 429 with `Retry-After`, a Kubernetes
    Status, a PostgreSQL error, a WebSocket close."""

    message: str
    retry_after: int


class Rejections(Protocol):
    """What a front door calls when it refused a credential: None to record the refusal as
    usual, or the answer to give instead once the address is over its limit."""

    async def rejected(self, host: str, endpoint: str) -> Limited | None: ...


def peer_host(client: str) -> str:
    """The host of a `HOST:PORT` or `[V6HOST]:PORT` client string."""
    host, sep, port = client.rpartition(":")
    if not sep or not port.isdigit():
        return client
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def window_start(now: dt.datetime, window: float) -> dt.datetime:
    """The start of the fixed window `now` falls in (windows are aligned to the epoch, so
    every member computes the same one)."""
    epoch = now.timestamp()
    return dt.datetime.fromtimestamp(math.floor(epoch / window) * window, dt.UTC)


def estimate(previous: int, current: int, elapsed: float, window: float) -> float:
    """The sliding-window count: `current` plus the part of `previous` the sliding window,
    `elapsed` seconds into the current fixed window, still covers."""
    return previous * max(0.0, 1.0 - elapsed / window) + current


def over(previous: int, current: int, elapsed: float, rule: Rule) -> bool:
    """Whether an attempt, counted in `current` already, goes over the rule."""
    # The tolerance absorbs float rounding: at the instant `retry_after` names, 120/60ths of
    # a window come out as 2.0000000000000036 and would refuse the attempt it promised.
    return estimate(previous, current, elapsed, rule.window) > rule.attempts + 1e-9


def retry_after(previous: int, current: int, elapsed: float, rule: Rule) -> int:
    """Whole seconds (at least 1) until one more attempt passes, `current` not counting it."""
    room = rule.attempts - 1  # what the others may weigh for one more to pass
    w = rule.window
    if current <= room:
        # The previous window's weight must fall: previous * (1 - t/w) + current <= room.
        if previous == 0:
            return 1
        t = w * (1.0 - (room - current) / previous)
        wait = t - elapsed
    else:
        # Not in this window: in the next, `current` becomes the previous window's count and
        # must weigh at most `room`: current * (1 - t/w) <= room.
        t = w * (1.0 - room / current)
        wait = (w - elapsed) + t
    return max(1, math.ceil(wait))


def address_key(host: str) -> str:
    """The client address an attempt is counted against: IPv4 as is, IPv6 by its /64 (one
    host commonly holds a whole /64), an IPv4-mapped IPv6 address as its IPv4 address."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])  # without an IPv6 zone
    except ValueError:
        return host[:LABEL_MAX]  # not an IP (a Unix socket, a test transport): as given
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)
