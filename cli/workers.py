"""`wardgate gateway --workers N`: N gateway processes on one host, one supervisor.

Each worker is a whole gateway process and a member of the fleet (gateway/fleet/), so N > 1
needs the PostgreSQL store the members share. The supervisor is the `wardgate gateway`
process itself and stays small: it never imports the gateway, it only starts, watches and
signals its workers.

- Ports. Every worker listens on the same public port with SO_REUSEPORT, and the kernel
  spreads new connections over them. Worker i takes agents on `agent_listen`'s port + i
  (port 0: each a free port) and registers that as its member address, so agents connect to
  every worker. The supervisor holds a bound (not listening) SO_REUSEPORT socket on the
  public port for its whole life: port 0 resolves once, and the port stays this gateway's
  while workers restart.
- Start. Worker 0 starts first and the others once it is ready, so the identity files in
  the shared data directory and the bootstrap admin token are made once. Readiness is a pipe
  (as systemd's notify): the worker writes READY=1 and closes it once it serves; EOF without
  it is a worker that failed to start. A worker that fails at the first start stops them
  all, with its exit status (its own error line says why).
- Signals. SIGTERM and SIGINT go to every worker: the first drains them, a second stops them
  at once; the supervisor exits when all have (status 0 when all did cleanly). Workers run
  in their own sessions, so a terminal's Ctrl-C reaches them once, through the supervisor;
  with systemd use `KillMode=mixed` for the same reason. A worker ends with SIGTERM when
  its supervisor dies, even by SIGKILL (PR_SET_PDEATHSIG).
- Restarts. A worker that exits on its own is logged and started again after 1 s, doubling
  up to 30 s while it keeps failing; a worker that ran RESTART_RESET seconds starts over at
  1 s. Its replacement is a new member; the fleet reaps the old one (docs/fleet.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
import os
import signal
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from shared.listen import ListenError, host_port

log = logging.getLogger(__name__)

READY = b"READY=1\n"
RESTART_FIRST = 1.0  # seconds before the first restart of a worker that died
RESTART_CAP = 30.0
RESTART_RESET = 60.0  # a worker that ran this long restarts after RESTART_FIRST again
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class Plan:
    """What the workers are started with: the options every one gets, and the addresses."""

    count: int
    options: tuple[str, ...]  # `wardgate gateway` options other than the addresses
    public: tuple[str, int]  # the port resolved
    agent: tuple[str, int]  # worker i takes agent port + i (0: a free one each)

    def agent_address(self, index: int) -> str:
        host, port = self.agent
        return host_port(host, port + index if port else 0)


def check_plan(count: int, agent_port: int) -> None:
    """Raise ValueError when `count` workers cannot have their ports."""
    if not hasattr(socket, "SO_REUSEPORT"):
        raise ValueError("--workers needs SO_REUSEPORT, which this system lacks: run one worker")
    if agent_port and agent_port + count - 1 > 65535:
        raise ValueError(
            f"worker {count - 1} would take agents on port {agent_port + count - 1}: "
            "give agent_listen a lower port (worker i uses its port + i)"
        )


def reserve(address: tuple[str, int]) -> socket.socket:
    """Bind (not listen) SO_REUSEPORT on the public address: resolves port 0, fails early
    when another program holds the port, and keeps it this gateway's across restarts."""
    host, port = address
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ListenError(host_port(host, port), exc) from exc
    return sock


def follow_supervisor(pid: int) -> None:
    """In a worker: get SIGTERM (a drain) when the supervisor dies, however it dies."""
    with contextlib.suppress(OSError, AttributeError, TypeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != pid:  # it died before the line above: nobody would stop this one
        sys.exit(1)


def notify_ready(fd: int) -> None:
    """In a worker: tell the supervisor this worker serves."""
    try:
        os.write(fd, READY)
    finally:
        os.close(fd)


@dataclass
class _Worker:
    index: int
    proc: asyncio.subprocess.Process | None = None
    starts: int = 0
    signals: int = 0  # sent to this process

    def send(self, sig: signal.Signals) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.signals += 1
            # os.kill, not send_signal: that polls first, and so reaps an exited worker
            # before asyncio's child watcher can, which then reports status 255.
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, sig)


class Supervisor:
    def __init__(self, plan: Plan, *, env: dict[str, str] | None = None) -> None:
        self.plan = plan
        self._env = env
        self._workers = [_Worker(i) for i in range(plan.count)]
        self._stopping = asyncio.Event()
        self._signals = 0

    # ---- signals ---------------------------------------------------------------------

    def on_signal(self, sig: signal.Signals) -> None:
        """Every signal goes to every worker: the first drains them, a second stops them."""
        self._signals += 1
        self._stopping.set()
        live = [w for w in self._workers if w.proc is not None and w.proc.returncode is None]
        what = "draining" if self._signals == 1 else "stopping at once"
        log.info("%s: %s %d workers", sig.name, what, len(live))
        for worker in live:
            worker.send(sig)

    # ---- workers ---------------------------------------------------------------------

    def _argv(self, worker: _Worker, ready_fd: int) -> list[str]:
        plan = self.plan
        argv = [
            sys.executable,
            "-P",  # not the working directory on sys.path: a data dir named `gateway` is one
            "-m",
            "cli.main",
            "gateway",
            *plan.options,
            "--listen",
            host_port(*plan.public),
            "--agent-listen",
            plan.agent_address(worker.index),
            "--workers",
            str(plan.count),
            "--worker",
            str(worker.index),
            "--ready-fd",
            str(ready_fd),
            "--supervisor-pid",
            str(os.getpid()),
        ]
        if worker.index != 0 or worker.starts > 1:
            argv.append("--quiet")  # the banner once: worker 0's first start
        return argv

    async def _start(self, worker: _Worker) -> bool:
        """Start `worker`; True once it is ready, False when it ended first."""
        worker.starts += 1
        worker.signals = 0
        read_fd, write_fd = os.pipe()
        try:
            worker.proc = await asyncio.create_subprocess_exec(
                *self._argv(worker, write_fd),
                pass_fds=(write_fd,),
                start_new_session=True,  # Ctrl-C reaches it through us only (one signal)
                env=self._env,
            )
        finally:
            os.close(write_fd)
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(read_fd, "rb")
        )
        try:
            said = await reader.read()  # until the worker closes it, or ends
        finally:
            transport.close()
        if said.startswith(READY):
            log.info("worker %d ready (pid %d)", worker.index, worker.proc.pid)
            return True
        return False

    async def _keep(self, worker: _Worker, ready_at: float) -> int:
        """Restart `worker` whenever it ends on its own; its status once we stop."""
        loop = asyncio.get_running_loop()
        delay = RESTART_FIRST
        while True:
            assert worker.proc is not None
            status = await worker.proc.wait()
            if self._stopping.is_set():
                return status
            ran = loop.time() - ready_at
            delay = RESTART_FIRST if ran >= RESTART_RESET else delay
            log.error(
                "worker %d (pid %d) %s after %.0fs: starting it again in %gs",
                worker.index,
                worker.proc.pid,
                _describe(status),
                ran,
                delay,
            )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._stopping.wait()
            if self._stopping.is_set():
                return 0
            delay = min(delay * 2, RESTART_CAP)
            ready_at = loop.time()
            if await self._start(worker):
                ready_at = loop.time()
                if self._stopping.is_set():  # a signal while it started: it missed it
                    self._forward_stop(worker)

    @staticmethod
    def _forward_stop(worker: _Worker) -> None:
        """Drain `worker` unless a signal of ours already reached it (no second one)."""
        if worker.signals == 0:
            worker.send(signal.SIGTERM)

    async def run(self) -> int:
        """Start the workers (worker 0 first), keep them, and return the exit status."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.on_signal, sig)
        first, *rest = self._workers
        started = [await self._start(first)]
        if started[0] and not self._stopping.is_set():
            started += await asyncio.gather(*(self._start(w) for w in rest))
        if not all(started) or self._stopping.is_set():
            return await self._stop_all(failed=not all(started))
        log.info("%d workers serve on %s", len(self._workers), host_port(*self.plan.public))
        now = loop.time()
        statuses = await asyncio.gather(*(self._keep(w, now) for w in self._workers))
        return 0 if all(s == 0 for s in statuses) else 1

    async def _stop_all(self, *, failed: bool) -> int:
        """A worker failed to start, or a signal came during the start: stop the others and
        exit with the failed worker's status (it said why)."""
        self._stopping.set()
        for worker in self._workers:
            self._forward_stop(worker)
        statuses = [await w.proc.wait() for w in self._workers if w.proc is not None]
        if not failed:
            return 0 if all(s == 0 for s in statuses) else 1
        return next((s for s in statuses if s > 0), 1)


def _describe(status: int) -> str:
    if status < 0:
        try:
            return f"was killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"was killed by signal {-status}"
    return f"exited with status {status}"


def supervise(plan: Plan, reserved: socket.socket, env: dict[str, str] | None = None) -> int:
    """Run the supervisor until every worker has ended; the process's exit status."""
    try:
        return asyncio.run(Supervisor(plan, env=env).run())
    finally:
        reserved.close()


def worker_options(given: Sequence[tuple[str, object | None]]) -> tuple[str, ...]:
    """The supervisor's own `gateway` options, as a worker's argv (None: not given)."""
    argv: list[str] = []
    for flag, value in given:
        if value is not None:
            argv += [flag, str(value)]
    return tuple(argv)
