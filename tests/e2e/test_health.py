"""Health, readiness and metrics of a real gateway process, and its JSON logs.

- `/livez` answers while the process serves; `/readyz` is 200 only while the store takes
  writes, and 503 naming the store while a PostgreSQL store is stopped;
- `/v1/health` lists the agents connected per pool, and the pools with none, as they come
  and go, and says when the store is unavailable;
- `/metrics` (Prometheus text, parsed with prometheus_client's own parser) counts a psql and
  a psycopg session with their outcome, statements and bytes, the agents per pool, and
  still carries the front door's counters; `/v1/metrics` is the same;
- `--log-format json` (and `log_format: json`) writes one JSON object per log line.
"""

from __future__ import annotations

import json
import re
import ssl
import subprocess
from typing import Any

import httpx
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.crypto import SecretBox
from tests.fixtures.postgres import PostgresServer, StoppableServer
from tests.fixtures.wardgate import GatewayProc, Wardgate, wait_for

pytestmark = pytest.mark.e2e

TEXT_LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (DEBUG|INFO|WARNING|ERROR) ")


def anonymous(gw: GatewayProc) -> httpx.Client:
    return httpx.Client(
        base_url=gw.url, verify=ssl.create_default_context(cafile=str(gw.ca_path)), timeout=30
    )


def health(gw: GatewayProc, *, admin: bool = True) -> dict[str, Any]:
    """/v1/health as an administrator sees it (names, errors), or as anyone does."""
    with gw.api() if admin else anonymous(gw) as http:
        answer = http.get("/v1/health")
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(gw: GatewayProc, path: str = "/metrics") -> Samples:
    with gw.api() as api:
        answer = api.get(path)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(answer.text)
        for s in family.samples
    }


def sample(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def json_lines(log: str) -> list[dict[str, Any]]:
    """The log's JSON lines; no line is in the text format."""
    lines = log.splitlines()
    assert not [line for line in lines if TEXT_LOG_LINE.match(line)], log
    entries = [json.loads(line) for line in lines if line.startswith("{")]
    for entry in entries:
        assert {"time", "level", "logger", "message"} <= entry.keys(), entry
    return entries


def test_health_follows_agents_and_metrics_count_sessions(
    wardgate: Wardgate, postgres_db: PostgresServer
) -> None:
    gw = wardgate.gateway(secret_key=SecretBox.generate_key(), log_format="json")
    with anonymous(gw) as http:
        assert http.get("/livez").status_code == 200
        ready = http.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json() == {
            "status": "ready",
            "checks": {"store": "ok", "identity": "ok", "draining": "ok", "agents": "ok"},
        }
        assert http.get("/metrics").status_code == 401  # administrators only

    key = gw.create_agent("east-1", pool="east")
    gw.create_agent("west-1", pool="west")  # never started
    before = health(gw)
    assert before["pools"] == {"east": [], "west": []}
    assert before["status"] == "degraded" and before["agents"] == 0
    assert before["store"] == {"status": "ok"} and before["draining"] is False
    # Anyone may ask (balancers have no credential), but learns no name.
    public = health(gw, admin=False)
    assert "pools" not in public and "east" not in str(public), public
    assert public["pools_without_agents"] == 2 and public["status"] == "degraded"

    agent = wardgate.agent(gw, key, "--log-format", "json", wait="east-1")
    during = health(gw)
    assert during["pools"] == {"east": ["east-1"], "west": []}
    assert during["pools_without_agents"] == ["west"] and during["agents"] == 1

    gw.create_connection(**postgres_db.connection_spec("pg", agent="east"))
    psql = subprocess.run(
        ["psql", gw.pg_conninfo("pg"), "-X", "-Atc", "select 1"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert psql.returncode == 0 and psql.stdout.strip() == "1", psql.stderr
    with psycopg.connect(gw.pg_conninfo("pg"), autocommit=True) as conn:
        assert conn.execute("select repeat('x', 10000)").fetchone() == ("x" * 10000,)

    def both_ended() -> Samples | None:
        found = scrape(gw)
        closed = sample(
            found, "wardgate_sessions_ended_total", protocol="postgres", outcome="closed"
        )
        return found if closed == 2 else None

    samples = wait_for(both_ended, "both sessions to be counted as ended")
    assert sample(samples, "wardgate_sessions_opened_total", protocol="postgres") == 2
    assert (sample(samples, "wardgate_statements_total", protocol="postgres") or 0) >= 2
    up = sample(samples, "wardgate_session_bytes_total", protocol="postgres", direction="up")
    down = sample(samples, "wardgate_session_bytes_total", protocol="postgres", direction="down")
    assert up is not None and up > 0
    assert down is not None and down > 10000
    assert sample(samples, "wardgate_agent_connections", pool="east") == 1
    assert sample(samples, "wardgate_agent_connections", pool="west") == 0
    for direction in ("out", "in"):  # one member: nothing to forward
        assert sample(samples, "wardgate_forwarded_sessions_total", direction=direction) == 0
    assert sample(samples, "wardgate_reviews_pending") == 0
    assert (sample(samples, "wardgate_audit_commit_seconds_count") or 0) > 0
    assert sample(samples, "wardgate_frontdoor_unauthenticated_connections") is not None
    assert {name for name, _ in scrape(gw, "/v1/metrics")} == {name for name, _ in samples}

    agent.stop()
    wait_for(lambda: health(gw)["pools"]["east"] == [], "the agent to leave /v1/health")
    after = health(gw)
    assert after["pools_without_agents"] == ["east", "west"] and after["agents"] == 0

    gateway_lines = json_lines(gw.log(tail=100_000))
    assert any(e["logger"].startswith("gateway") for e in gateway_lines), gw.log()
    assert json_lines(agent.log(tail=100_000)), agent.log()


def test_readyz_is_503_while_the_store_is_down(
    stoppable_postgres: StoppableServer, wardgate: Wardgate
) -> None:
    gw = wardgate.gateway(
        store=stoppable_postgres.server.url(), secret_key=SecretBox.generate_key()
    )

    def ready_status() -> int:
        with anonymous(gw) as http:
            return http.get("/readyz").status_code

    assert ready_status() == 200
    stoppable_postgres.stop()
    wait_for(lambda: ready_status() == 503, "/readyz to say 503")
    with anonymous(gw) as http:
        answer = http.get("/readyz").json()
        assert http.get("/livez").status_code == 200
    assert answer["status"] == "not ready" and answer["failed"] == ["store"], answer
    assert answer["checks"]["store"] == "unavailable", answer  # no host named to anyone
    down = health(gw, admin=False)
    assert down["status"] == "unavailable" and down["store"] == {"status": "unavailable"}

    stoppable_postgres.start()
    wait_for(lambda: ready_status() == 200, "/readyz to be 200 again")
    assert health(gw)["store"] == {"status": "ok"}
    assert health(gw, admin=False)["store"] == {"status": "ok"}


def test_a_restarted_member_is_ready_once_its_agents_are_back(wardgate: Wardgate) -> None:
    # A balancer that sent clients to a member before its agents had dialled it got them
    # "no agent of pool ... is connected" (tests/e2e/test_fleet_faults.py, rolling restart).
    gw = wardgate.gateway(fleet={"agent_warmup": 120})
    key = gw.create_agent("east-1", pool="east")

    def ready() -> httpx.Response:
        with anonymous(gw) as http:
            return http.get("/readyz")

    gw.restart()  # the store now knows pool east, and its agent is not here
    waiting = ready()
    assert waiting.status_code == 503 and waiting.json()["failed"] == ["agents"], waiting.text
    assert "east" not in waiting.text  # no names to strangers
    wardgate.agent(gw, key, wait="east-1")
    wait_for(lambda: ready().status_code == 200, "/readyz once the agent is back")
