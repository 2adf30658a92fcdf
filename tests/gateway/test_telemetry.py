"""The gateway's metrics registry: what each audit event counts as, commit latency, the
agent pools, and the older counters (gateway/metrics.py) served in the same scrape."""

from __future__ import annotations

from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from gateway.metrics import Counter
from gateway.telemetry import Telemetry

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(telemetry: Telemetry) -> Samples:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(telemetry.render().decode())
        for s in family.samples
    }


def test_audit_events_count_as_statements_or_refusals_by_protocol() -> None:
    t = Telemetry()
    events: list[tuple[str, dict[str, Any]]] = [
        ("pg.statement", {"text": "select 1"}),
        ("pg.statement", {"text": "select 2"}),
        ("pg.refused", {"reason": "read-only"}),
        ("ssh.exec", {"command": "ls"}),
        ("ssh.refused", {"reason": "auth"}),
        ("k8s.request", {"decision": "allow"}),
        ("k8s.request", {"decision": "deny"}),
        ("session.open", {"protocol": "postgres"}),  # counted by the broker, not here
        ("pg.result", {"rows": 1}),
    ]
    for kind, data in events:
        t.audit_event(kind, data)
    found = scrape(t)
    assert found[("wardgate_statements_total", (("protocol", "postgres"),))] == 2
    assert found[("wardgate_statements_total", (("protocol", "ssh"),))] == 1
    assert found[("wardgate_statements_total", (("protocol", "kubernetes"),))] == 1
    assert found[("wardgate_refusals_total", (("protocol", "postgres"),))] == 1
    assert found[("wardgate_refusals_total", (("protocol", "ssh"),))] == 1
    assert found[("wardgate_refusals_total", (("protocol", "kubernetes"),))] == 1


def test_commit_latency_is_a_histogram_and_forwarded_sessions_start_at_zero() -> None:
    t = Telemetry()
    t.audit_committed(0.003)
    t.audit_committed(0.2)
    found = scrape(t)
    assert found[("wardgate_audit_commit_seconds_count", ())] == 2
    assert found[("wardgate_audit_commit_seconds_bucket", (("le", "0.005"),))] == 1
    assert found[("wardgate_audit_commit_seconds_bucket", (("le", "+Inf"),))] == 2
    for direction in ("out", "in"):
        assert found[("wardgate_forwarded_sessions_total", (("direction", direction),))] == 0


def test_known_pools_without_agents_show_zero() -> None:
    t = Telemetry()
    t.known_pools = frozenset({"east", "west"})
    assert t.pools() == {"east": [], "west": []}
    found = scrape(t)
    assert found[("wardgate_agent_connections", (("pool", "east"),))] == 0
    assert ("wardgate_reviews_pending", ()) not in found  # not read from the store yet
    t.reviews_pending = 3
    assert scrape(t)[("wardgate_reviews_pending", ())] == 3


def test_older_counters_keep_their_names_and_types_in_the_same_scrape() -> None:
    t = Telemetry()
    refused = Counter("wardgate_auth_rate_limited_total", "Refused.", ("limit", "endpoint"))
    refused.inc("address", "workload", amount=11)
    t.add_counters(lambda: [refused])
    families = {f.name: f for f in text_string_to_metric_families(t.render().decode())}
    family = families["wardgate_auth_rate_limited"]
    assert family.type == "counter"
    assert [(s.labels, s.value) for s in family.samples] == [
        ({"limit": "address", "endpoint": "workload"}, 11.0)
    ]


def test_two_gateways_in_one_process_count_apart() -> None:
    a, b = Telemetry(), Telemetry()
    a.audit_event("pg.statement", {})
    assert scrape(a)[("wardgate_statements_total", (("protocol", "postgres"),))] == 1
    assert ("wardgate_statements_total", (("protocol", "postgres"),)) not in scrape(b)
