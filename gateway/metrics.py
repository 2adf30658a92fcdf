"""Counters of the front door and the rate limiter, in the Prometheus text format (exposition
format 0.0.4). `gateway.telemetry` serves them at `/metrics` (and `/v1/metrics`) with the
rest of the member's metrics, as families of the Prometheus client library (`samples`).

Each gateway member counts what it saw itself; Prometheus scrapes every member and sums.
Counters belong to the component that counts (two gateways in one process count apart).
A counter's label values come from the gateway's own vocabulary (a limit kind, an endpoint
name), never from a client, so the number of series stays fixed.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Counter:
    kind = "counter"  # the exposition format's type

    def __init__(self, name: str, help_text: str, labels: tuple[str, ...]) -> None:
        self.name = name
        self.help = help_text
        self.labels = labels
        self._values: dict[tuple[str, ...], float] = {}
        self._lock = threading.Lock()  # admin API handlers run in threads

    def inc(self, *values: str, amount: float = 1.0) -> None:
        if len(values) != len(self.labels):
            raise ValueError(f"{self.name} takes labels {self.labels}")
        with self._lock:
            self._values[values] = self._values.get(values, 0.0) + amount

    def value(self, *values: str) -> float:
        with self._lock:
            return self._values.get(values, 0.0)

    def samples(self) -> list[tuple[tuple[str, ...], float]]:
        """(label values, value) pairs, sorted."""
        with self._lock:
            return sorted(self._values.items())

    def lines(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} counter"
        with self._lock:
            items = sorted(self._values.items())
        for values, amount in items:
            pairs = ",".join(
                f'{k}="{_escape(v)}"' for k, v in zip(self.labels, values, strict=True)
            )
            yield f"{self.name}{{{pairs}}} {_number(amount)}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    return str(int(value)) if value.is_integer() else repr(value)


def render(counters: Iterable[Counter]) -> str:
    return "".join(f"{line}\n" for counter in counters for line in counter.lines())
