"""Prometheus metrics of the gateway, in the text exposition format (version 0.0.4).

A handful of counters and gauges do not need a client library: each metric is a name, a
help line and samples keyed by label values; `Registry.render()` is what `GET /metrics`
answers (gateway/api/metrics.py). Label values are ours (reasons, phases), never a client's
input, so they need no escaping beyond the format's own.
"""

from __future__ import annotations

from collections.abc import Callable


class _Metric:
    kind = ""

    def __init__(self, name: str, help_text: str, labels: tuple[str, ...] = ()) -> None:
        self.name = name
        self.help = help_text
        self.labels = labels
        self._values: dict[tuple[str, ...], float] = {}

    def _key(self, values: dict[str, str]) -> tuple[str, ...]:
        if set(values) != set(self.labels):
            raise ValueError(f"{self.name} takes labels {self.labels}, not {tuple(values)}")
        return tuple(values[name] for name in self.labels)

    def value(self, **labels: str) -> float:
        return self._values.get(self._key(labels), 0.0)

    def samples(self) -> list[tuple[tuple[str, ...], float]]:
        return sorted(self._values.items())

    def render(self) -> str:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]
        samples = self.samples() or ([((), 0.0)] if not self.labels else [])
        for key, value in samples:
            pairs = ",".join(f'{n}="{_escape(v)}"' for n, v in zip(self.labels, key, strict=True))
            lines.append(
                f"{self.name}{{{pairs}}} {_number(value)}"
                if pairs
                else f"{self.name} {_number(value)}"
            )
        return "\n".join(lines) + "\n"


class Counter(_Metric):
    kind = "counter"

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = self._key(labels)
        self._values[key] = self._values.get(key, 0.0) + amount


class Gauge(_Metric):
    """A value read when rendered, from `read` (no bookkeeping that could drift)."""

    kind = "gauge"

    def __init__(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        super().__init__(name, help_text)
        self._read = read

    def samples(self) -> list[tuple[tuple[str, ...], float]]:
        return [((), float(self._read()))]


class Registry:
    def __init__(self) -> None:
        self._metrics: dict[str, _Metric] = {}

    def _add(self, metric: _Metric) -> None:
        if metric.name in self._metrics:
            raise ValueError(f"metric {metric.name} is registered twice")
        self._metrics[metric.name] = metric

    def counter(self, name: str, help_text: str, labels: tuple[str, ...] = ()) -> Counter:
        metric = Counter(name, help_text, labels)
        self._add(metric)
        return metric

    def gauge(self, name: str, help_text: str, read: Callable[[], float]) -> Gauge:
        metric = Gauge(name, help_text, read)
        self._add(metric)
        return metric

    def render(self) -> str:
        return "".join(m.render() for m in self._metrics.values())


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    return str(int(value)) if value.is_integer() else repr(value)
