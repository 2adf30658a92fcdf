"""Prometheus metrics of one gateway member, served at `/metrics` (and `/v1/metrics`).

Each gateway has its own `CollectorRegistry` (several gateways run in one test process), and
one scrape of it sees everything: the counters below, values read when scraped (agent
connections, bytes of live sessions, pending reviews), and the front door's and rate
limiter's counters (gateway/metrics.py).

What is counted, and where it is counted:
- sessions: `SessionBroker` reports each session opened, refused (by the `SessionError` kind)
  and ended (closed, failed, or terminated by a revocation or an expired grant);
- statements and refusals: the audit log sees every statement, command and API request before
  it is forwarded, and every refusal (`Auditor` reports each event's kind);
- audit commit latency: the `Auditor`'s writer reports each commit;
- bytes: of ended sessions when they end, plus the live sessions' so far when scraped.

Label values come from the gateway's own vocabulary (protocol, outcome, refusal kind, pool
names an administrator made), never from a client, so the number of series stays bounded.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest

from gateway import metrics as legacy

if TYPE_CHECKING:
    from gateway.agents.registry import AgentRegistry
    from gateway.sessions import Session

# The exposition format the text is in (prometheus_client's default output is 0.0.4).
CONTENT_TYPE = legacy.CONTENT_TYPE

# Which audit events are statements (a statement, command or API request judged and let
# through or held) and which are refusals, by protocol.
_STATEMENTS = {
    "pg.statement": "postgres",
    "ssh.exec": "ssh",
    "ssh.shell": "ssh",
    "ssh.subsystem": "ssh",
    "ssh.forward": "ssh",
    "ssh.file_op": "ssh",
    "k8s.request": "kubernetes",
}
_REFUSALS = {"pg.refused": "postgres", "ssh.refused": "ssh"}

_tracer = trace.get_tracer("wardgate.gateway")

# Audit commits take ~0.2 ms (SQLite fsync) to tens of ms (a remote PostgreSQL).
_COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Telemetry:
    """The metrics of one gateway member."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.sessions_opened = Counter(
            "wardgate_sessions_opened",
            "Sessions opened (routed to an agent), by protocol.",
            ("protocol",),
            registry=r,
        )
        self.sessions_ended = Counter(
            "wardgate_sessions_ended",
            "Sessions ended, by protocol and outcome (closed, failed, terminated).",
            ("protocol", "outcome"),
            registry=r,
        )
        self.sessions_refused = Counter(
            "wardgate_sessions_refused",
            "Sessions refused before they opened, by protocol and reason (forbidden, no_agent...).",
            ("protocol", "reason"),
            registry=r,
        )
        self.statements = Counter(
            "wardgate_statements",
            "Statements, commands and API requests judged and recorded, by protocol.",
            ("protocol",),
            registry=r,
        )
        self.refusals = Counter(
            "wardgate_refusals",
            "Statements, commands, requests and logins refused, by protocol.",
            ("protocol",),
            registry=r,
        )
        self.audit_commit = Histogram(
            "wardgate_audit_commit_seconds",
            "Time to commit one batch of audit events to the store.",
            buckets=_COMMIT_BUCKETS,
            registry=r,
        )
        self.forwarded = Counter(
            "wardgate_forwarded_sessions",
            "Sessions carried over the member-to-member link: out, sent to the member with "
            "the agent; in, served here for the member with the client.",
            ["direction"],
            registry=r,
        )
        self.mcp_calls = Counter(
            "wardgate_mcp_tool_calls",
            "MCP tool calls (gateway/api/mcp.py), by tool and outcome (ok; refused: a tool "
            "error such as a guardrail's refusal; error: anything else).",
            ("tool", "outcome"),
            registry=r,
        )
        for direction in ("out", "in"):
            self.forwarded.labels(direction)  # shown at 0 before the first
        self._lock = threading.Lock()  # the audit writer may report from its thread
        self._live: dict[str, tuple[str, Session]] = {}
        self._bytes: dict[tuple[str, str], int] = {}
        self._sources: list[Callable[[], Iterable[legacy.Counter]]] = []
        self._registry: AgentRegistry | None = None
        self.known_pools: frozenset[str] = frozenset()  # from the store; see `pools`
        self.reviews_pending: int | None = None  # from the store, refreshed per scrape
        r.register(_ReadAtScrape(self))

    # ---- wiring ----------------------------------------------------------------------

    def watch_agents(self, registry: AgentRegistry) -> None:
        self._registry = registry

    def add_counters(self, source: Callable[[], Iterable[legacy.Counter]]) -> None:
        """Serve the counters of gateway/metrics.py (front door, rate limits) here too."""
        self._sources.append(source)

    # ---- hooks -----------------------------------------------------------------------

    def session_opened(self, protocol: str, session: Session, started_ns: int) -> None:
        self.sessions_opened.labels(protocol).inc()
        with self._lock:
            self._live[session.id] = (protocol, session)
        _trace_open(
            protocol,
            session.connection.name,
            started_ns,
            {"wardgate.session_id": session.id, "wardgate.agent": session.agent.name},
        )

    def session_refused(self, protocol: str, connection: str, reason: str, started_ns: int) -> None:
        self.sessions_refused.labels(protocol, reason).inc()
        _trace_open(protocol, connection, started_ns, {"wardgate.refused": reason})

    def session_ended(self, session: Session, outcome: str) -> None:
        with self._lock:
            found = self._live.pop(session.id, None)
            if found is None:
                return  # opened before this telemetry was wired, or ended twice
            protocol = found[0]
            for direction, amount in _directions(session):
                key = (protocol, direction)
                self._bytes[key] = self._bytes.get(key, 0) + amount
        self.sessions_ended.labels(protocol, outcome).inc()

    def audit_event(self, kind: str, data: Mapping[str, Any]) -> None:
        if kind == "k8s.request" and data.get("decision") == "deny":
            self.refusals.labels("kubernetes").inc()
        elif (protocol := _STATEMENTS.get(kind)) is not None:
            self.statements.labels(protocol).inc()
        elif (protocol := _REFUSALS.get(kind)) is not None:
            self.refusals.labels(protocol).inc()

    def audit_committed(self, seconds: float) -> None:
        self.audit_commit.observe(seconds)

    # ---- reading ---------------------------------------------------------------------

    def pools(self) -> dict[str, list[str]]:
        """Connected agents by pool, with the known pools that have none."""
        pools: dict[str, list[str]] = {pool: [] for pool in self.known_pools}
        if self._registry is not None:
            for agent in self._registry.connected():
                if not agent.closed.is_set():
                    pools.setdefault(agent.pool, []).append(agent.name)
        return {pool: sorted(names) for pool, names in sorted(pools.items())}

    def session_bytes(self) -> dict[tuple[str, str], int]:
        with self._lock:
            totals = dict(self._bytes)
            live = list(self._live.values())
        for protocol, session in live:
            for direction, amount in _directions(session):
                totals[(protocol, direction)] = totals.get((protocol, direction), 0) + amount
        return totals

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _trace_open(
    protocol: str, connection: str, started_ns: int, attributes: Mapping[str, str]
) -> None:
    """A `session.open` span from `started_ns` to now: from the client's request to the
    session routed to an agent (authorization, the durable audit event, the agent's open).
    Without an OpenTelemetry SDK configured the span is a no-op; see docs/monitoring.md."""
    span = _tracer.start_span(
        "session.open",
        kind=trace.SpanKind.SERVER,
        start_time=started_ns,
        attributes={"wardgate.protocol": protocol, "wardgate.connection": connection, **attributes},
    )
    if "wardgate.refused" in attributes:
        span.set_status(trace.Status(trace.StatusCode.ERROR, attributes["wardgate.refused"]))
    span.end()


def _directions(session: Session) -> tuple[tuple[str, int], tuple[str, int]]:
    # Up: client to target; down: target to client (as the session rows count them).
    return (("up", session.stream.bytes_out), ("down", session.stream.bytes_in))


class _ReadAtScrape:
    """Values read when scraped, so they cannot drift from what they describe."""

    def __init__(self, telemetry: Telemetry) -> None:
        self._t = telemetry

    def collect(self) -> Iterator[Metric]:
        t = self._t
        agents = GaugeMetricFamily(
            "wardgate_agent_connections",
            "Agents connected to this member, by pool (0: a pool with no agent here).",
            labels=("pool",),
        )
        for pool, names in t.pools().items():
            agents.add_metric((pool,), len(names))
        yield agents
        sent = CounterMetricFamily(
            "wardgate_session_bytes",
            "Session bytes, by protocol and direction (up: client to target; down: back).",
            labels=("protocol", "direction"),
        )
        for (protocol, direction), amount in sorted(t.session_bytes().items()):
            sent.add_metric((protocol, direction), amount)
        yield sent
        if t.reviews_pending is not None:
            yield GaugeMetricFamily(
                "wardgate_reviews_pending",
                "Reviews waiting for a decision (the whole fleet's, read from the store).",
                value=t.reviews_pending,
            )
        for counter in (c for source in t._sources for c in source()):
            family = (
                GaugeMetricFamily(counter.name, counter.help, labels=counter.labels)
                if counter.kind == "gauge"
                else CounterMetricFamily(counter.name, counter.help, labels=counter.labels)
            )
            for values, value in counter.samples():
                family.add_metric(values, value)
            yield family
