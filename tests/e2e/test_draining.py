"""Stopping and failing well: a gateway that drains on SIGTERM, an agent that hangs.

Real processes throughout: a gateway and agents (tests.fixtures.wardgate), a real
PostgreSQL server, and OpenSSH's ssh against a real sshd. The figures the documentation
names (docs/draining.md) are measured here and printed: run with `-s` to see them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from gateway.crypto import SecretBox
from tests.e2e.test_kubernetes import KUBE_POLICY, VIEWERS, KubeSetup
from tests.e2e.test_ssh import Route, ssh_connection
from tests.fixtures.kube_apiserver import KubeApiServerDouble, connect_and_log_in
from tests.fixtures.postgres import PostgresServer, closed_by_gateway, notices_of
from tests.fixtures.sshd import Sshd
from tests.fixtures.wardgate import GatewayProc, Proc, Wardgate, wait_for

pytestmark = pytest.mark.e2e

GRACE = 4.0  # the drain grace of these tests' gateways, seconds
SSH_GRACE = 6.0  # time for a second ssh handshake during the drain
DETECTION = 5.0  # the named figure: a hung agent is dropped within this (docs/draining.md)
MARGIN = 3.0  # for a loaded CI machine
SHUTDOWN_TEXT = "the Wardgate gateway is shutting down"


def _gateway(wardgate: Wardgate, pg: PostgresServer, **config: Any) -> GatewayProc:
    gw = wardgate.gateway(secret_key=SecretBox.generate_key(), **config)
    gw.create_connection(**pg.connection_spec("pg"))
    return gw


def _session_of(gw: GatewayProc, text: str) -> str:
    [event] = [e for e in gw.audit("pg.statement") if text in e["data"]["text"]]
    return str(event["session"])


def _sessions(gw: GatewayProc) -> list[dict[str, Any]]:
    with gw.api() as api:
        rows: list[dict[str, Any]] = api.get("/v1/sessions").json()
    return rows


def _record(gw: GatewayProc, session_id: str) -> dict[str, Any]:
    with gw.api() as api:
        found: dict[str, Any] = api.get(f"/v1/sessions/{session_id}").json()
    return found


def _exited(proc: Proc) -> int | None:
    assert proc.proc is not None
    return proc.proc.poll()


# ---- draining ----------------------------------------------------------------------------


def test_sigterm_lets_sessions_finish_then_ends_the_rest_with_57p01(
    wardgate: Wardgate, postgres_server: PostgresServer
) -> None:
    gw = _gateway(wardgate, postgres_server, drain_grace=GRACE)
    agent = wardgate.agent(gw, gw.create_agent("default"), wait="default")
    finishing = psycopg.connect(gw.pg_conninfo("pg"), autocommit=True)
    idle = psycopg.connect(gw.pg_conninfo("pg"), autocommit=True)
    try:
        notices = notices_of(idle)
        finishing.execute("select 'drain-finishing'")
        idle.execute("select 'drain-idle'")
        finishing_id, idle_id = _session_of(gw, "drain-finishing"), _session_of(gw, "drain-idle")

        os.kill(gw.pid, signal.SIGTERM)
        started = time.monotonic()
        wait_for(lambda: gw.audit("gateway.draining"), "the gateway to start draining")

        # New sessions are refused in PostgreSQL's words while the listener still answers
        # (so /readyz can say "draining"); once the drain ends the port is closed.
        with pytest.raises(psycopg.OperationalError) as refused:
            psycopg.connect(gw.pg_conninfo("pg"), connect_timeout=10).close()
        assert SHUTDOWN_TEXT in str(refused.value)
        assert "FATAL" in str(refused.value)
        with gw.api() as api:  # balancers stop sending clients here
            ready = api.get("/readyz")
        assert ready.status_code == 503 and ready.json()["failed"] == ["draining"], ready.text

        # A live session goes on during the grace period and ends as usual.
        assert finishing.execute("select 'still served'").fetchone() == ("still served",)
        finishing.close()

        wait_for(
            lambda: closed_by_gateway(idle),
            "the idle session to be ended",
            timeout=GRACE + 10,
        )
        ended_after = time.monotonic() - started
        print(f"\nidle session ended {ended_after:.2f}s after SIGTERM (grace {GRACE:g}s)")
        assert ended_after >= GRACE - 0.5
        assert [code for code, _ in notices] == ["57P01"], notices
        [(_, message)] = notices
        assert message is not None and "the Wardgate gateway is shutting down" in message
        with pytest.raises(psycopg.OperationalError):
            idle.execute("select 1")
    finally:
        finishing.close()
        idle.close()

    assert wait_for(lambda: _exited(gw) is not None, "the gateway to exit") is not None
    assert gw.proc is not None and gw.proc.returncode == 0, gw.log()
    assert "Traceback" not in gw.log(400)
    # Told to move: the agent reconnects (to another member behind its address).
    assert "gateway said goodbye: gateway shutting down" in agent.log()
    assert agent.alive()

    gw.start().wait_ready()  # the same store: what did it record?
    closed, cut = _record(gw, finishing_id), _record(gw, idle_id)
    assert (closed["status"], closed["error"]) == ("closed", None)
    assert (cut["status"], cut["error"]) == ("failed", "gateway shutting down")
    [terminated] = [e for e in gw.audit("session.terminated") if e["session"] == idle_id]
    assert terminated["data"]["reason"] == "gateway shutting down"
    refusals = [e["data"]["reason"] for e in gw.audit("session.refused")]
    assert refusals == ["gateway shutting down"]


def test_a_drain_with_no_sessions_left_stops_at_once_and_the_flag_sets_the_grace(
    wardgate: Wardgate, postgres_server: PostgresServer
) -> None:
    gw = _gateway(wardgate, postgres_server)  # drain_grace: 30 s by default
    wardgate.agent(gw, gw.create_agent("default"), wait="default")
    with psycopg.connect(gw.pg_conninfo("pg"), autocommit=True) as conn:
        conn.execute("select 1")
    started = time.monotonic()
    assert gw.stop(timeout=15) == 0, gw.log()
    assert time.monotonic() - started < 10  # idle: no wait for the grace period

    # --drain-grace overrides the configuration.
    gw.args = [*gw.args, "--drain-grace", "1"]
    gw.start().wait_ready()
    gw.wait_agent("default")
    conn = psycopg.connect(gw.pg_conninfo("pg"), autocommit=True)
    try:
        notices = notices_of(conn)
        conn.execute("select 2")
        started = time.monotonic()
        os.kill(gw.pid, signal.SIGTERM)
        wait_for(lambda: closed_by_gateway(conn), "the session to end", timeout=15)
        assert time.monotonic() - started < 1 + MARGIN + 2
        assert [code for code, _ in notices] == ["57P01"]
    finally:
        conn.close()
    assert wait_for(lambda: _exited(gw) is not None, "the gateway to exit") is not None


def test_a_second_sigterm_stops_at_once(
    wardgate: Wardgate, postgres_server: PostgresServer
) -> None:
    gw = _gateway(wardgate, postgres_server, drain_grace=120)
    wardgate.agent(gw, gw.create_agent("default"), wait="default")
    with psycopg.connect(gw.pg_conninfo("pg"), autocommit=True) as conn:
        conn.execute("select 1")
        os.kill(gw.pid, signal.SIGTERM)
        wait_for(lambda: gw.audit("gateway.draining"), "the gateway to start draining")
        started = time.monotonic()
        os.kill(gw.pid, signal.SIGTERM)
        wait_for(lambda: _exited(gw) is not None, "the gateway to exit", timeout=15)
        assert time.monotonic() - started < 10


@pytest.fixture
def ssh_route(wardgate: Wardgate, sshd: Sshd, tmp_path: Path) -> Iterator[Route]:
    gw = wardgate.gateway(drain_grace=SSH_GRACE)
    agent = wardgate.agent(gw, gw.create_agent("default"), wait="default")
    gw.create_connection(**ssh_connection(sshd))
    yield Route(gw, sshd, tmp_path, agent=agent)


def test_sigterm_tells_an_ssh_client_why_with_an_exit_status(ssh_route: Route) -> None:
    gw = ssh_route.gw
    ssh = subprocess.Popen(
        ["ssh", "-p", str(gw.public_port), *ssh_route.options(), ssh_route.destination],
        env=ssh_route.env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert ssh.stdin is not None and ssh.stdout is not None
        ssh.stdin.write(b"echo ready-$((6*7))\n")
        ssh.stdin.flush()
        assert ssh.stdout.readline() == b"ready-42\n"  # a live shell
        os.kill(gw.pid, signal.SIGTERM)
        wait_for(lambda: gw.audit("gateway.draining"), "the gateway to start draining")
        refused = ssh_route.ssh("true", timeout=SSH_GRACE)
        assert refused.returncode != 0
        assert SHUTDOWN_TEXT.encode() in refused.stderr, refused.stderr
        assert ssh.poll() is None  # the live shell is still there
        ssh.wait(timeout=SSH_GRACE + 20)  # stdin stays open: the shell would end at its EOF
        assert ssh.stderr is not None
        err = ssh.stderr.read()
    finally:
        if ssh.poll() is None:
            ssh.kill()
            ssh.wait()
        for pipe in (ssh.stdin, ssh.stdout, ssh.stderr):
            if pipe is not None:
                pipe.close()
    assert ssh.returncode == 255, err
    assert b"wardgate: session ended: gateway shutting down" in err, err
    wait_for(lambda: _exited(gw) is not None, "the gateway to exit")
    gw.start().wait_ready()
    [row] = [r for r in _sessions(gw) if r["protocol"] == "ssh"]
    assert (row["status"], row["error"]) == ("failed", "gateway shutting down")


# ---- failure detection -----------------------------------------------------------------


def test_a_hung_agent_is_dropped_within_the_figure_and_its_session_fails_clearly(
    wardgate: Wardgate, postgres_server: PostgresServer
) -> None:
    gw = _gateway(wardgate, postgres_server)
    hung = wardgate.agent(gw, gw.create_agent("hung", pool="default"), wait="hung")
    conn = psycopg.connect(gw.pg_conninfo("pg"), autocommit=True)
    stopped = False
    try:
        conn.execute("select 'on the doomed agent'")  # the only agent yet: it serves this
        wardgate.agent(gw, gw.create_agent("spare", pool="default"), wait="spare")

        os.kill(hung.pid, signal.SIGSTOP)
        stopped = True
        started = time.monotonic()
        with pytest.raises(psycopg.OperationalError) as lost:
            conn.execute("select 'after the agent hung'")
        failed_after = time.monotonic() - started
        wait_for(
            lambda: not gw.agents()["hung"]["connected"],
            "the hung agent to be dropped",
            timeout=DETECTION + MARGIN,
            interval=0.02,
        )
        dropped_after = time.monotonic() - started
        print(
            f"\nhung agent: session failed after {failed_after:.2f}s, "
            f"agent dropped after {dropped_after:.2f}s (figure {DETECTION:g}s)"
        )
        assert failed_after <= DETECTION + MARGIN
        assert dropped_after <= DETECTION + MARGIN
        assert "agent 'hung' lost: silent for 3s" in str(lost.value)
        [event] = [e for e in gw.audit("agent.disconnected") if e["actor"] == "hung"]
        assert event["data"]["reason"] == "silent for 3s"

        # New sessions go to the agent that answers, every time.
        for n in range(4):
            with psycopg.connect(gw.pg_conninfo("pg"), autocommit=True) as again:
                assert again.execute(f"select {n}").fetchone() == (n,)
        rows = wait_for(
            lambda: (r := _sessions(gw)) and all(x["ended_at"] for x in r) and r,
            "every session to be recorded as ended",
        )
        assert sorted(r["agent"] for r in rows) == ["hung"] + ["spare"] * 4
        [doomed] = [r for r in rows if r["agent"] == "hung"]
        assert (doomed["status"], doomed["error"]) == ("failed", "agent 'hung' lost: silent for 3s")
    finally:
        conn.close()
        if stopped:
            os.kill(hung.pid, signal.SIGCONT)


def test_kubernetes_requests_during_a_drain_get_503(
    kube_apiserver: KubeApiServerDouble, wardgate: Wardgate, tmp_path: Path
) -> None:
    gw = wardgate.gateway(kubernetes=KUBE_POLICY, roles=VIEWERS, drain_grace=GRACE)
    wardgate.agent(gw, gw.create_agent("default"), wait="default")
    kubeconfig = connect_and_log_in(wardgate, gw, kube_apiserver, tmp_path, impersonate="true")
    env = gw.client_env()
    env.update(KUBECONFIG=str(kubeconfig), HOME=str(tmp_path))
    kube = KubeSetup(gw, kubeconfig, env, kube_apiserver)
    with kube.popen("get", "pods", "-w", "-o", "name") as watch:  # a live session
        try:
            assert watch.stdout is not None
            assert watch.stdout.readline().strip() == "pod/web-1"
            wait_for(lambda: kube_apiserver._watchers, "kubectl to start watching")
            os.kill(gw.pid, signal.SIGTERM)
            wait_for(lambda: gw.audit("gateway.draining"), "the gateway to start draining")
            out = kube.kubectl("get", "pods", "-o", "name")
            assert out.returncode != 0
            assert "ServiceUnavailable" in out.stderr, out.stderr
            assert SHUTDOWN_TEXT in out.stderr, out.stderr
            watch.wait(timeout=GRACE + 20)  # cut when the grace period is over
        finally:
            if watch.poll() is None:
                watch.kill()
    wait_for(lambda: _exited(gw) is not None, "the gateway to exit")


def test_an_agent_notices_a_hung_gateway_within_the_figure_and_comes_back(
    wardgate: Wardgate,
) -> None:
    gw = wardgate.gateway()
    agent = wardgate.agent(gw, gw.create_agent("default"), wait="default")
    os.kill(gw.pid, signal.SIGSTOP)
    started = time.monotonic()
    try:
        wait_for(
            lambda: "gateway silent for 3s" in agent.log(),
            "the agent to give up on the hung gateway",
            timeout=DETECTION + MARGIN,
            interval=0.02,
        )
        noticed_after = time.monotonic() - started
    finally:
        os.kill(gw.pid, signal.SIGCONT)
    print(f"\nhung gateway: the agent noticed after {noticed_after:.2f}s (figure {DETECTION:g}s)")
    assert noticed_after <= DETECTION + MARGIN
    wait_for(
        lambda: len([e for e in gw.audit("agent.connected") if e["actor"] == "default"]) == 2,
        "the agent to reconnect",
    )
    gw.wait_agent("default")


def test_an_idle_gateway_keeps_answering_503_for_the_notice_before_its_port_closes(
    wardgate: Wardgate, postgres_server: PostgresServer
) -> None:
    # A balancer that checks /readyz takes the member out before its port closes; without
    # the notice an idle member closed at once and cut connects in flight (test_fleet_faults).
    gw = _gateway(wardgate, postgres_server, drain_notice=10.0, drain_grace=30.0)

    def readyz() -> int:
        with gw.api() as api:
            return api.get("/readyz").status_code

    assert readyz() == 200
    os.kill(gw.pid, signal.SIGTERM)
    wait_for(lambda: readyz() == 503, "/readyz to say 503 while the port still answers")
    with pytest.raises(psycopg.OperationalError, match="shutting down"):
        psycopg.connect(gw.pg_conninfo("pg"), connect_timeout=10).close()
    assert wait_for(lambda: _exited(gw) is not None, "the gateway to exit") is not None
    assert _exited(gw) == 0
