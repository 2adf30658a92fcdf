"""`wardgate gateway --workers 2`: one supervisor, two member processes on one PostgreSQL
store sharing the public port (SO_REUSEPORT), each with its own agent port (cli/workers.py).

Which worker a connection reaches is the kernel's choice (a hash of the client's address
and port), so nothing here depends on it: each worker's agent connection is read from the
agent's own log, and the sessions' spread from the store (`sessions list` names the member
of each); 20 sessions all on one of two workers would be a 1 in 2^19 chance.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import psutil
import psycopg
import pytest
import yaml

from gateway.crypto import SecretBox
from tests.fixtures.postgres import PostgresServer
from tests.fixtures.wardgate import (
    WARDGATE,
    GatewayProc,
    Proc,
    Wardgate,
    _env,
    free_port,
    free_ports,
    wait_for,
)

pytestmark = pytest.mark.e2e

TARGET = "workers_target"
# A worker starting (or an agent's backoff after one) on a loaded 2-core CI machine: a
# restart takes 1 s of backoff and a whole gateway start.
SLOW = 60.0


def free_port_pair() -> int:
    """A port P with P and P + 1 free (worker 1 takes agents on P + 1)."""
    return free_ports(2)


@dataclass
class Workers:
    gw: GatewayProc
    agent: Proc
    agent_port: int  # worker 0's; worker 1 takes the next

    def worker_pids(self) -> dict[int, int]:
        """Worker index -> pid, from the supervisor's children."""
        pids = {}
        for child in psutil.Process(self.gw.pid).children():
            with_index = child.cmdline()
            if "--worker" in with_index:
                pids[int(with_index[with_index.index("--worker") + 1])] = child.pid
        return pids

    def live_members(self, wardgate: Wardgate) -> list[dict[str, Any]]:
        done = wardgate.cli(self.gw, "members", "list", "-o", "json")
        assert done.returncode == 0, done.stderr
        return [m for m in json.loads(done.stdout) if m["state"] == "live"]

    def agent_connections(self, port: int) -> int:
        return self.agent.log(tail=100_000).count(f"connected to 127.0.0.1:{port} ")


def connected_to(w: Workers, port: int) -> Callable[[], bool]:
    return lambda: w.agent_connections(port) > 0


@pytest.fixture
def workers(
    wardgate: Wardgate,
    postgres_db: PostgresServer,
    postgres_server: PostgresServer,
    request: pytest.FixtureRequest,
) -> Iterator[Workers]:
    """Two workers and an agent connected to each; `indirect` parameters add config."""
    agent_port = free_port_pair()
    gw = wardgate.gateway(
        workers=2,
        store=postgres_db.url(),
        secret_key=SecretBox.generate_key(),
        agent_listen=f"127.0.0.1:{agent_port}",
        **getattr(request, "param", {}),
    )
    postgres_server.drop_database(TARGET)
    target = postgres_server.create_database(TARGET)
    gw.create_connection(**target.connection_spec("pg-workers"))
    key = gw.create_agent("default")
    agent = wardgate.agent(gw, key, wait="default")
    w = Workers(gw, agent, agent_port)
    for port in (agent_port, agent_port + 1):
        wait_for(connected_to(w, port), f"the agent on agent port {port}", timeout=SLOW)
    yield w
    gw.stop()
    postgres_server.drop_database(TARGET)


def sessions_through_the_public_port(gw: GatewayProc, count: int) -> None:
    for i in range(count):
        with psycopg.connect(gw.pg_conninfo("pg-workers"), connect_timeout=10) as conn:
            assert conn.execute("select %s::int", (i,)).fetchone() == (i,)


def test_two_workers_are_two_members_each_with_the_agent_and_sessions_land_on_both(
    wardgate: Wardgate, workers: Workers
) -> None:
    members = wait_for(
        lambda: len(m := workers.live_members(wardgate)) == 2 and m, "two live members"
    )
    ports = {m["id"]: int(m["agent_address"].rpartition(":")[2]) for m in members}
    # Each member's id names its worker, whose agent port is the configured one + its index.
    assert sorted((mid.rsplit("-", 2)[1], port) for mid, port in ports.items()) == [
        ("w0", workers.agent_port),
        ("w1", workers.agent_port + 1),
    ]
    assert sorted(workers.worker_pids()) == [0, 1]

    sessions_through_the_public_port(workers.gw, 20)

    done = wardgate.cli(workers.gw, "sessions", "list", "-o", "json")
    assert done.returncode == 0, done.stderr
    sessions = json.loads(done.stdout)
    assert len(sessions) == 20
    assert {s["member"] for s in sessions} == {m["id"] for m in members}
    # The banner and the admin token: once, from worker 0.
    assert workers.gw.log(tail=100_000).count("Wardgate gateway on https://") == 1


def test_a_killed_worker_is_started_again_and_rejoins(wardgate: Wardgate, workers: Workers) -> None:
    before = wait_for(
        lambda: len(m := workers.live_members(wardgate)) == 2 and m, "two live members"
    )
    old_pid = workers.worker_pids()[1]
    second = workers.agent_port + 1
    connected = workers.agent_connections(second)

    psutil.Process(old_pid).send_signal(signal.SIGKILL)

    new_pid = wait_for(
        lambda: (pid := workers.worker_pids().get(1)) not in (None, old_pid) and pid,
        "worker 1 started again",
        timeout=SLOW,
    )
    assert f"worker 1 (pid {old_pid}) was killed by SIGKILL" in workers.gw.log(tail=100_000)
    old_ids = {m["id"] for m in before}

    def rejoined() -> bool:
        return any(
            m["id"] not in old_ids and m["agent_address"].endswith(f":{second}")
            for m in workers.live_members(wardgate)
        )

    wait_for(rejoined, "the new worker 1 live in members list", timeout=SLOW)
    wait_for(
        lambda: workers.agent_connections(second) > connected, "the agent on worker 1", timeout=SLOW
    )
    assert psutil.Process(new_pid).is_running()
    sessions_through_the_public_port(workers.gw, 6)


def test_sigterm_to_the_supervisor_drains_every_worker_and_exits_0(workers: Workers) -> None:
    pids = workers.worker_pids()
    assert len(pids) == 2

    assert workers.gw.stop(signal.SIGTERM) == 0

    assert not any(psutil.pid_exists(p) and psutil.Process(p).is_running() for p in pids.values())
    log = workers.gw.log(tail=100_000)
    assert log.count("draining: no new sessions") == 2  # each worker drained
    assert "SIGTERM: draining 2 workers" in log


@pytest.mark.parametrize("workers", [{"drain_grace": 120}], indirect=True)
def test_a_second_signal_stops_every_worker_at_once(workers: Workers) -> None:
    """The first SIGTERM drains: an idle worker ends, a session goes on; the second ends the
    draining worker at once, long before its grace (120 s) is over."""
    held = psycopg.connect(workers.gw.pg_conninfo("pg-workers"), autocommit=True)
    try:
        held.execute("select 1")
        os.kill(workers.gw.pid, signal.SIGTERM)
        wait_for(lambda: len(workers.worker_pids()) == 1, "the idle worker to end its drain")
        assert workers.gw.alive()
        assert held.execute("select 2").fetchone() == (2,)  # the drain lets it finish

        stopped = time.monotonic()
        assert workers.gw.stop(signal.SIGTERM, timeout=60) == 0
        assert time.monotonic() - stopped < 30
        log = workers.gw.log(tail=100_000)
        assert "SIGTERM: draining 2 workers" in log
        assert "SIGTERM: stopping at once 1 workers" in log
        with pytest.raises(psycopg.OperationalError):
            held.execute("select 3")
    finally:
        held.close()


def test_workers_drain_when_their_supervisor_is_killed(workers: Workers) -> None:
    pids = list(workers.worker_pids().values())
    assert len(pids) == 2

    workers.gw.kill()

    def ended(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    wait_for(lambda: all(ended(p) for p in pids), "both workers to end after their supervisor")


def test_several_workers_on_sqlite_are_refused_in_one_line(wardgate: Wardgate) -> None:
    done = subprocess.run(
        [
            *WARDGATE,
            "gateway",
            "--workers",
            "2",
            "--data-dir",
            str(wardgate.tmp / "sqlite"),
            "--listen",
            f"127.0.0.1:{free_port()}",
        ],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "2 workers need a PostgreSQL store" in lines[0]
    assert "set store (a postgresql:// URL) and secret_key" in lines[0]


def test_a_worker_that_fails_to_start_stops_the_supervisor_with_its_error(
    wardgate: Wardgate, postgres_db: PostgresServer
) -> None:
    """Worker 0 refuses a PostgreSQL store without secret_key: the supervisor starts no
    other worker and exits with worker 0's status and its one line."""
    config = wardgate.tmp / "gateway.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "listen": f"127.0.0.1:{free_port()}",
                "agent_listen": f"127.0.0.1:{free_port_pair()}",
                "data_dir": str(wardgate.tmp / "data"),
                "store": postgres_db.url(),
                "workers": 2,
            }
        )
    )
    done = subprocess.run(
        [*WARDGATE, "gateway", "--config", str(config)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "set secret_key (or WARDGATE_SECRET_KEY)" in errors[0]
    assert "worker 1" not in done.stderr
