"""The schedule of a run: start the three routes, run every workload on each, repeated.

Workloads run one after the other; within a workload every repeat measures all routes, and
the route order rotates from one repeat to the next, so slow drift on the machine (page cache,
CPU frequency, the audit log growing) does not favour one route. Relay-only measurements
(CPU, memory) skip the direct route, which has no relay; memory is measured on relays started
for it (see `_Measurement.memory`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from bench import report, scp, workloads
from bench.bastion import ssh_tunnel
from bench.postgres import Postgres, postgres
from bench.procs import run_checked
from bench.report import Samples
from bench.routes import DIRECT, LABELS, SSH_TUNNEL, Route
from bench.wardgate import wardgate

MB = 1_000_000
WARM_SESSIONS = 16  # opened and closed on fresh relays before their memory is measured
WARM_COPY_BYTES = 1 * MB


@dataclass(frozen=True, slots=True)
class Settings:
    """Sizes and durations of one run (seconds, bytes, counts)."""

    repeats: int
    warmup_s: int
    latency_s: int
    tps_s: int
    connect_s: int
    connect_clients: int
    copy_bytes: tuple[int, int]  # the "500 MB" and the "1 GB" runs; the second is watched for RSS
    cpu_round_trips: int
    idle_sessions: int
    pgbench_scale: int
    scp_bytes: int = 200 * MB


FULL = Settings(
    repeats=3,
    warmup_s=2,
    latency_s=5,
    tps_s=5,
    connect_s=4,
    connect_clients=4,
    copy_bytes=(500 * MB, 1000 * MB),
    cpu_round_trips=5000,
    idle_sessions=1000,
    pgbench_scale=1,
)
QUICK = Settings(
    repeats=2,
    warmup_s=1,
    latency_s=1,
    tps_s=1,
    connect_s=1,
    connect_clients=2,
    copy_bytes=(5 * MB, 10 * MB),
    cpu_round_trips=300,
    idle_sessions=20,
    pgbench_scale=1,
    scp_bytes=2 * MB,
)


class Progress:
    """One line on stderr per measurement, with the time since the run started."""

    def __init__(self) -> None:
        self.started = time.monotonic()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def say(self, message: str) -> None:
        print(f"[{self.elapsed:6.1f}s] {message}", file=sys.stderr, flush=True)


def rotated(routes: Sequence[Route], rep: int) -> list[Route]:
    """The routes in the order of repeat ``rep``: rotated by one each repeat."""
    shift = rep % len(routes)
    return [*routes[shift:], *routes[:shift]]


def schedule(routes: Sequence[Route], repeats: int) -> Iterator[tuple[int, Route]]:
    """Every route once per repeat, the order rotated by one each repeat."""
    for rep in range(repeats):
        for route in rotated(routes, rep):
            yield rep, route


def _login(conninfo: str) -> bool:
    with psycopg.connect(conninfo, connect_timeout=5) as conn:
        conn.execute("SELECT 1")
    return True


@dataclass(frozen=True, slots=True)
class Routes:
    """The three routes of the run, and a way to start fresh relays for memory measurements."""

    direct: Route
    ssh_tunnel: Route
    wardgate: Route
    fresh: Callable[[str], contextlib.AbstractContextManager[list[Route]]]
    scp: scp.ScpTargets

    @property
    def all(self) -> list[Route]:
        return [self.direct, self.ssh_tunnel, self.wardgate]


@contextlib.contextmanager
def _relays(work_dir: Path, pg: Postgres, direct: Route) -> Iterator[list[Route]]:
    """A new ssh tunnel (and sshd) and a new Wardgate (gateway and agent), both to ``pg``."""
    work_dir.mkdir()
    with contextlib.ExitStack() as stack:

        def ready(port: int) -> bool:
            return _login(dataclasses.replace(direct, port=port).conninfo())

        tunnel = stack.enter_context(ssh_tunnel(work_dir / "ssh", pg.port, ready))
        ssh = dataclasses.replace(
            direct,
            name=SSH_TUNNEL,
            port=tunnel.local_port,
            relays={"ssh": tunnel.ssh, "sshd": tunnel.sshd},
        )
        wg = stack.enter_context(wardgate(work_dir / "wardgate", pg))
        gated = wg.route()
        _login(gated.conninfo())
        yield [ssh, gated]


@contextlib.contextmanager
def start_routes(work_dir: Path, settings: Settings) -> Iterator[tuple[Routes, dict[str, str]]]:
    """PostgreSQL, the ssh bastion and Wardgate; yields the routes and version facts."""
    with contextlib.ExitStack() as stack:
        pg = stack.enter_context(
            postgres(
                work_dir / "postgres",
                max_connections=settings.idle_sessions + 100,
                scale=settings.pgbench_scale,
            )
        )
        plain = {"sslmode": "disable"}
        direct = Route(DIRECT, pg.host, pg.port, pg.role, pg.password, pg.database, plain)
        ssh, gated = stack.enter_context(_relays(work_dir / "relays", pg, direct))

        def fresh(tag: str) -> contextlib.AbstractContextManager[list[Route]]:
            return _relays(work_dir / f"relays-{tag}", pg, direct)

        versions = {"postgresql": pg.version, "openssh": _ssh_version()}
        # The bastion's sshd is also the scp target (see bench.scp).
        targets = scp.setup(work_dir / "relays" / "ssh", gated, work_dir)
        yield Routes(direct, ssh, gated, fresh, targets), versions


def _ssh_version() -> str:
    found = shutil.which("ssh")
    return run_checked([found or "ssh", "-V"], timeout=10, what="ssh -V").stderr.strip()


@dataclass
class _Measurement:
    """One run's schedule, workload by workload; each method is one phase of the run."""

    routes: Routes
    settings: Settings
    work_dir: Path
    samples: Samples = field(default_factory=Samples)
    progress: Progress = field(default_factory=Progress)

    def note(self, name: str, rep: int, route: Route, text: str) -> None:
        reps = self.settings.repeats
        self.progress.say(f"{name} [{rep + 1}/{reps}] {LABELS[route.name]}: {text}")

    def warm_up(self) -> None:
        for route in self.routes.all:
            workloads.warm_up(route, self.settings.warmup_s)
        self.progress.say("warmed up")

    def latency(self) -> None:
        s = self.settings
        params = {"clients": 1, "duration_s": s.latency_s, "scale": s.pgbench_scale}
        self.samples.params[report.LATENCY_P50] = self.samples.params[report.LATENCY_P99] = params
        for rep, route in schedule(self.routes.all, s.repeats):
            lat = workloads.select_latency(route, s.latency_s, self.work_dir)
            self.samples.add(report.LATENCY_P50, route.name, lat.p50_ms)
            self.samples.add(report.LATENCY_P99, route.name, lat.p99_ms)
            self.note("latency", rep, route, f"p50 {lat.p50_ms:.3f} ms, p99 {lat.p99_ms:.3f} ms")

    def throughput(self) -> None:
        s = self.settings
        for clients, name in ((8, report.TPS_8), (32, report.TPS_32)):
            self.samples.params[name] = {"clients": clients, "threads": 2, "duration_s": s.tps_s}
            for rep, route in schedule(self.routes.all, s.repeats):
                tps = workloads.select_tps(route, clients, s.tps_s)
                self.samples.add(name, route.name, tps)
                self.note(f"{clients} clients", rep, route, f"{tps:,.0f} tps")

    def connections(self) -> None:
        s = self.settings
        self.samples.params[report.CONNECT] = {
            "clients": s.connect_clients,
            "duration_s": s.connect_s,
        }
        for rep, route in schedule(self.routes.all, s.repeats):
            rate = workloads.connection_rate(route, s.connect_clients, s.connect_s, self.work_dir)
            self.samples.add(report.CONNECT, route.name, rate)
            self.note("connection setup", rep, route, f"{rate:,.0f}/s")

    def bulk(self) -> None:
        small, large = self.settings.copy_bytes
        for nbytes, name in ((small, report.COPY_500MB), (large, report.COPY_1GB)):
            self.samples.params[name] = {"bytes": nbytes}
            for rep, route in schedule(self.routes.all, self.settings.repeats):
                mb_per_s = workloads.copy_out(route, nbytes).mb_per_s
                self.samples.add(name, route.name, mb_per_s)
                self.note(f"COPY {nbytes / MB:g} MB", rep, route, f"{mb_per_s:.0f} MB/s")

    def scp(self) -> None:
        nbytes = self.settings.scp_bytes
        self.samples.params[report.SCP_UP] = self.samples.params[report.SCP_DOWN] = {
            "bytes": nbytes,
            "scp_mode": "sftp",
        }
        for rep, route in schedule(self.routes.all, self.settings.repeats):
            up, down = scp.copy(self.routes.scp, route.name, nbytes, self.work_dir)
            self.samples.add(report.SCP_UP, route.name, up)
            self.samples.add(report.SCP_DOWN, route.name, down)
            self.note(f"scp {nbytes / MB:g} MB", rep, route, f"up {up:.0f}, down {down:.0f} MB/s")

    def relay_cpu(self) -> None:
        round_trips = self.settings.cpu_round_trips
        self.samples.params[report.CPU] = {"round_trips": round_trips}
        relayed = [self.routes.ssh_tunnel, self.routes.wardgate]
        for rep, route in schedule(relayed, self.settings.repeats):
            cpu = workloads.relay_cpu(route, round_trips).ms_per_1000
            self.samples.add(report.CPU, route.name, sum(cpu.values()), cpu)
            self.note("relay CPU", rep, route, _per_part(cpu, "ms per 1,000 round trips"))

    def memory(self) -> None:
        """Idle sessions and streaming, each on relays started for it.

        A process keeps the heap an earlier workload grew and reuses it: measured in the same
        process, a second batch of 1,000 sessions reads close to nothing. Fresh relays, warmed by
        a few sessions, measure what the sessions themselves cost.
        """
        sessions = self.settings.idle_sessions
        large = self.settings.copy_bytes[1]
        params = {"sessions": sessions, "fresh_relays": True}
        self.samples.params[report.IDLE_RSS] = self.samples.params[report.IDLE_PER_SESSION] = params
        self.samples.params[report.STREAM_RSS] = {"bytes": large, "fresh_relays": True}
        for rep in range(self.settings.repeats):
            with self.routes.fresh(f"idle{rep}") as fresh:
                for route in rotated(fresh, rep):
                    workloads.idle_sessions(route, WARM_SESSIONS, settle=0)
                    idle = workloads.idle_sessions(route, sessions)
                    rss, per_session = idle.rss_mib, idle.kib_per_session
                    self.samples.add(report.IDLE_RSS, route.name, sum(rss.values()), rss)
                    total = sum(per_session.values())
                    self.samples.add(report.IDLE_PER_SESSION, route.name, total, per_session)
                    self.note("idle sessions", rep, route, _per_part(per_session, "KiB/session"))
            with self.routes.fresh(f"stream{rep}") as fresh:
                for route in rotated(fresh, rep):
                    workloads.copy_out(route, WARM_COPY_BYTES)
                    growth = workloads.copy_out(route, large, watch_rss=True).rss_growth_mib
                    self.samples.add(report.STREAM_RSS, route.name, sum(growth.values()), growth)
                    self.note(f"RSS, COPY {large / MB:g} MB", rep, route, _per_part(growth, "MiB"))


def measure(routes: Routes, settings: Settings, work_dir: Path) -> Samples:
    """Run every workload on every route, ``settings.repeats`` times."""
    phases = _Measurement(routes, settings, work_dir)
    phases.warm_up()
    phases.latency()
    phases.throughput()
    phases.connections()
    phases.bulk()
    phases.scp()
    phases.relay_cpu()
    phases.memory()
    phases.progress.say("done")
    return phases.samples


def _per_part(values: Mapping[str, float], unit: str) -> str:
    return ", ".join(f"{part} {value:+.1f}" for part, value in values.items()) + f" {unit}"


def run(settings: Settings, work_dir: Path) -> tuple[list[dict[str, Any]], Mapping[str, Any]]:
    """Start everything, measure, stop everything; the rows and the machine facts."""
    # Other work on the machine competes for the same cores: say how busy it was.
    load_before = os.getloadavg()[0]
    if load_before > 0.5:
        print(
            f"bench: load average {load_before:.2f} before starting: other processes compete "
            "for the CPUs and the numbers will be noisy",
            file=sys.stderr,
        )
    with start_routes(work_dir, settings) as (routes, versions):
        samples = measure(routes, settings, work_dir)
    machine = report.machine_facts(**versions, load_avg_1m_before=round(load_before, 2))
    return report.build_rows(samples, machine), machine
