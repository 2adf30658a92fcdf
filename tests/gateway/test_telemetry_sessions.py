"""Sessions as the broker reports them to telemetry, on a real store: counted by protocol
and outcome with their bytes, and traced as `session.open` spans (OpenTelemetry SDK with an
in-memory exporter in place of a collector)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import cast

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gateway.agents.registry import AgentRegistry
from gateway.audit import Auditor
from gateway.sessions import SessionBroker, SessionError
from gateway.store import ConnectionRecord, Store
from gateway.telemetry import Telemetry
from tests.gateway.test_session_authz import POLICY, FakeRegistry, FakeStream, Rig, person
from tests.gateway.test_telemetry import scrape

_EXPORTER = InMemorySpanExporter()


@pytest.fixture(scope="session")
def installed_provider() -> None:
    # The global provider can be set once per process.
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
    trace.set_tracer_provider(provider)


@pytest.fixture
def spans(installed_provider: None) -> Iterator[InMemorySpanExporter]:
    _EXPORTER.clear()
    yield _EXPORTER
    _EXPORTER.clear()


@pytest.fixture
async def counted(tmp_path: Path) -> AsyncIterator[tuple[Rig, Telemetry]]:
    store = Store.open(f"sqlite:///{tmp_path / 'wg.db'}")
    store.connections.upsert(
        ConnectionRecord(name="pg", type="postgres", pool="default", host="10.0.0.1", port=1)
    )
    telemetry = Telemetry()
    auditor = Auditor(store, telemetry=telemetry)
    registry = FakeRegistry()
    broker = SessionBroker(
        store, cast(AgentRegistry, registry), auditor, None, POLICY, telemetry=telemetry
    )
    try:
        yield Rig(tmp_path / "wg.db", store, broker, registry, auditor), telemetry
    finally:
        await auditor.aclose()
        store.close()


async def test_sessions_are_counted_by_outcome_with_their_bytes(
    counted: tuple[Rig, Telemetry],
) -> None:
    rig, telemetry = counted
    writer = person(rig, "walt", ("writers",))
    first = await rig.broker.open(writer, "pg", protocol="postgres", client_addr="c")
    stream = cast(FakeStream, first.stream)
    stream.bytes_out, stream.bytes_in = 100, 2000
    live = scrape(telemetry)  # a live session's bytes count as they go
    assert (
        live[("wardgate_session_bytes_total", (("direction", "down"), ("protocol", "postgres")))]
        == 2000
    )
    await rig.broker.finish(first)
    second = await rig.broker.open(writer, "pg", protocol="postgres", client_addr="c")
    await rig.broker.terminate(reason="credential revoked", user="walt")
    await rig.broker.finish(second, error="credential revoked")
    with pytest.raises(SessionError):
        await rig.broker.open(person(rig, "nobody", ()), "pg", protocol="postgres", client_addr="c")

    found = scrape(telemetry)
    pg = ("protocol", "postgres")
    assert found[("wardgate_sessions_opened_total", (pg,))] == 2
    assert found[("wardgate_sessions_ended_total", (("outcome", "closed"), pg))] == 1
    assert found[("wardgate_sessions_ended_total", (("outcome", "terminated"), pg))] == 1
    assert found[("wardgate_sessions_refused_total", (pg, ("reason", "forbidden")))] == 1
    assert found[("wardgate_session_bytes_total", (("direction", "up"), pg))] == 100
    assert found[("wardgate_session_bytes_total", (("direction", "down"), pg))] == 2000
    assert found[("wardgate_audit_commit_seconds_count", ())] > 0


async def test_each_session_open_is_a_span(
    counted: tuple[Rig, Telemetry], spans: InMemorySpanExporter
) -> None:
    rig, _ = counted
    session = await rig.broker.open(
        person(rig, "walt", ("writers",)), "pg", protocol="postgres", client_addr="c"
    )
    with pytest.raises(SessionError):
        await rig.broker.open(person(rig, "nobody", ()), "pg", protocol="postgres", client_addr="c")
    await rig.broker.finish(session)

    opened, refused = spans.get_finished_spans()
    assert opened.name == refused.name == "session.open"
    assert opened.kind is trace.SpanKind.SERVER
    assert dict(opened.attributes or {}) == {
        "wardgate.protocol": "postgres",
        "wardgate.connection": "pg",
        "wardgate.session_id": session.id,
        "wardgate.agent": "agent-1",
    }
    assert opened.status.status_code is trace.StatusCode.UNSET
    assert opened.start_time is not None and opened.end_time is not None
    assert opened.end_time > opened.start_time
    assert (refused.attributes or {})["wardgate.refused"] == "forbidden"
    assert refused.status.status_code is trace.StatusCode.ERROR
