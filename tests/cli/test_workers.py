"""The supervisor's plan for `wardgate gateway --workers` (cli/workers.py); the processes
themselves are tested in tests/e2e/test_workers.py."""

from __future__ import annotations

import signal
import socket
import sys

import pytest

from cli.workers import Plan, Supervisor, _describe, _Worker, check_plan, reserve
from shared.listen import ListenError


def plan(agent: tuple[str, int] = ("127.0.0.1", 8444)) -> Plan:
    return Plan(count=3, options=("--config", "gw.yaml"), public=("0.0.0.0", 8443), agent=agent)


def test_worker_i_takes_agents_on_the_agent_port_plus_i() -> None:
    assert [plan().agent_address(i) for i in range(3)] == [
        "127.0.0.1:8444",
        "127.0.0.1:8445",
        "127.0.0.1:8446",
    ]
    assert plan(("::1", 0)).agent_address(2) == "[::1]:0"  # port 0: a free port each


def test_agent_ports_past_65535_are_refused_naming_the_fix() -> None:
    check_plan(2, 65534)
    with pytest.raises(ValueError, match="worker 2 would take agents on port 65536"):
        check_plan(3, 65534)


def test_a_worker_runs_this_interpreter_without_the_working_directory_on_its_path() -> None:
    supervisor = Supervisor(plan())
    argv = supervisor._argv(_Worker(1), ready_fd=7)
    assert argv[:5] == [sys.executable, "-P", "-m", "cli.main", "gateway"]
    assert argv[argv.index("--agent-listen") + 1] == "127.0.0.1:8445"
    assert argv[argv.index("--listen") + 1] == "0.0.0.0:8443"
    assert argv[argv.index("--ready-fd") + 1] == "7"
    assert "--config" in argv and "--quiet" in argv


def test_only_worker_0_at_its_first_start_prints_the_banner() -> None:
    supervisor = Supervisor(plan())
    first = _Worker(0, starts=1)
    assert "--quiet" not in supervisor._argv(first, ready_fd=7)
    assert "--quiet" in supervisor._argv(_Worker(0, starts=2), ready_fd=7)


def test_how_a_worker_ended_is_said_in_words() -> None:
    assert _describe(-signal.SIGKILL) == "was killed by SIGKILL"
    assert _describe(3) == "exited with status 3"


def test_the_supervisor_holds_the_public_port_for_its_workers_only() -> None:
    """Port 0 resolves once; a worker (SO_REUSEPORT) may listen on it, anyone else may not."""
    reserved = reserve(("127.0.0.1", 0))
    port = reserved.getsockname()[1]
    with socket.socket() as worker, socket.socket() as stranger:
        worker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        worker.bind(("127.0.0.1", port))
        worker.listen()
        with pytest.raises(OSError):
            stranger.bind(("127.0.0.1", port))
    reserved.close()


def test_a_public_port_another_program_holds_is_refused_naming_it() -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        with pytest.raises(ListenError) as refused:
            reserve(("127.0.0.1", port))
    assert refused.value.address == f"127.0.0.1:{port}"
