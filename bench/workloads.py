"""The workloads: each function measures one route once and returns plain numbers.

    select_latency   pgbench -S, 1 client, per-transaction log: p50/p99 in ms
    select_tps       pgbench -S, N clients (2 threads): transactions per second
    connection_rate  pgbench -C with `SELECT 1`: connect, authenticate, query, disconnect per s
    copy_out         psql `COPY (SELECT ...) TO STDOUT` of a given size: MB/s (10^6 bytes),
                     and, when asked, the relays' peak RSS growth while it streams
    relay_cpu        a fixed number of simple-query round trips on one open connection:
                     the relays' CPU time (user + system) per 1,000 round trips
    idle_sessions    N open, idle sessions: the relays' RSS, and its growth per session

pgbench and psql are C clients, so the client's own cost is small and alike on every route;
the two psycopg loops (relay_cpu, idle_sessions) only count what the relays spend.
"""

from __future__ import annotations

import contextlib
import math
import re
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import psutil
import psycopg
from psycopg.rows import TupleRow

from bench.postgres import client_program
from bench.procs import BenchError, run_checked
from bench.routes import Route

ROW_BYTES = 1001  # repeat('x', 1000) and the newline of COPY's text format
_TPS = re.compile(r"^tps = ([0-9.]+)", re.MULTILINE)
_NOTHING_PROCESSED = re.compile(r"^number of transactions actually processed: 0$", re.MULTILINE)
_FAILED = re.compile(r"^number of failed transactions: ([0-9]+)", re.MULTILINE)
_MB = 1_000_000
_MIB = 1 << 20


@dataclass(frozen=True, slots=True)
class Latency:
    p50_ms: float
    p99_ms: float
    transactions: int


@dataclass(frozen=True, slots=True)
class CopyResult:
    mb_per_s: float
    rss_growth_mib: dict[str, float]  # per relay part; empty for the direct route


@dataclass(frozen=True, slots=True)
class RelayCpu:
    ms_per_1000: dict[str, float]  # per relay part


@dataclass(frozen=True, slots=True)
class IdleSessions:
    rss_mib: dict[str, float]  # per relay part, with the sessions open
    kib_per_session: dict[str, float]  # per relay part, growth over the baseline / sessions


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of a non-empty sample."""
    if not values:
        raise ValueError("percentile of an empty sample")
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def _pgbench(route: Route, args: Sequence[str], duration: float) -> str:
    try:
        result = run_checked(
            [client_program("pgbench"), "-n", *args],
            env=route.libpq_env(),
            timeout=duration + 120,
            what=f"pgbench {' '.join(args)} via {route.name}",
        )
    except BenchError as exc:
        raise BenchError(f"{exc}\n{route.relay_report()}") from exc
    failed = _FAILED.search(result.stdout)
    if failed is not None and int(failed.group(1)) > 0:
        raise BenchError(f"pgbench via {route.name} had failed transactions:\n{result.stdout}")
    return result.stdout


def _tps(output: str) -> float:
    match = _TPS.search(output)
    if match is None:
        raise BenchError(f"no tps in pgbench output:\n{output}")
    return float(match.group(1))


def warm_up(route: Route, duration: float) -> None:
    """A short select-only run, so caches, pools and lazy imports are ready before measuring."""
    _pgbench(route, ["-S", "-c", "2", "-j", "2", "-T", str(max(1, round(duration)))], duration)


def select_latency(
    route: Route, duration: int, log_dir: Path, *, prepared: bool = False
) -> Latency:
    """pgbench -S latency with one client; `prepared`: the extended protocol, prepared once."""
    prefix = log_dir / f"latency-{route.name}-{time.monotonic_ns()}"
    mode = ["-M", "prepared"] if prepared else []
    _pgbench(
        route,
        ["-S", *mode, "-c", "1", "-j", "1", "-T", str(duration), "--log", f"--log-prefix={prefix}"],
        duration,
    )
    latencies_us: list[float] = []
    for path in prefix.parent.glob(prefix.name + ".*"):
        for line in path.read_text().splitlines():
            # client_id transaction_no time_us script_no epoch epoch_us [...]
            fields = line.split()
            if len(fields) >= 3 and fields[2].isdigit():
                latencies_us.append(float(fields[2]))
        path.unlink()
    if not latencies_us:
        raise BenchError(f"pgbench via {route.name} logged no transactions")
    return Latency(
        percentile(latencies_us, 50) / 1000,
        percentile(latencies_us, 99) / 1000,
        len(latencies_us),
    )


def _tps_run(route: Route, args: Sequence[str], duration: int) -> float:
    """pgbench's tps for `args` run `duration` seconds. pgbench 15 counts the clients'
    connecting in -T: when that took the whole run (many clients, a loaded machine) nothing
    was measured, and the run is repeated at twice the length, twice at most."""
    for attempt in range(3):
        seconds = duration * 2**attempt
        output = _pgbench(route, [*args, "-T", str(seconds)], seconds)
        if _NOTHING_PROCESSED.search(output) is None:
            return _tps(output)
    raise BenchError(f"pgbench via {route.name} processed nothing in {seconds} s:\n{output}")


def select_tps(route: Route, clients: int, duration: int) -> float:
    jobs = min(clients, 2)
    return _tps_run(route, ["-S", "-c", str(clients), "-j", str(jobs)], duration)


def connection_rate(route: Route, clients: int, duration: int, work_dir: Path) -> float:
    script = work_dir / "select1.sql"
    script.write_text("SELECT 1;\n")
    jobs = min(clients, 2)
    return _tps_run(route, ["-C", "-f", str(script), "-c", str(clients), "-j", str(jobs)], duration)


def _rss(processes: list[psutil.Process]) -> int:
    total = 0
    for proc in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += int(proc.memory_info().rss)
    return total


def _cpu_seconds(processes: list[psutil.Process]) -> float:
    total = 0.0
    for proc in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


@contextlib.contextmanager
def _peak_rss(route: Route, interval: float = 0.02) -> Iterator[dict[str, float]]:
    """Sample the relays' RSS in a thread; the yielded dict gets each part's growth in MiB."""
    parts = route.relay_processes()
    baseline = {part: _rss(procs) for part, procs in parts.items()}
    peak = dict(baseline)
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(interval):
            for part, procs in parts.items():
                peak[part] = max(peak[part], _rss(procs))

    growth: dict[str, float] = {}
    sampler = threading.Thread(target=sample, name="rss-sampler", daemon=True)
    sampler.start()
    try:
        yield growth
    finally:
        stop.set()
        sampler.join()
    for part, procs in parts.items():
        peak[part] = max(peak[part], _rss(procs))
        growth[part] = (peak[part] - baseline[part]) / _MIB


def copy_out(route: Route, nbytes: int, *, watch_rss: bool = False) -> CopyResult:
    """Stream ``nbytes`` of COPY output to psql (to /dev/null); with ``watch_rss``, sample the
    relays' RSS meanwhile (a thread polling /proc every 20 ms)."""
    rows = max(1, nbytes // ROW_BYTES)
    query = f"COPY (SELECT repeat('x', 1000) FROM generate_series(1, {rows:d})) TO STDOUT"  # noqa: S608
    args = [client_program("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", query]
    growth_by_part: dict[str, float] = {}
    watching: contextlib.AbstractContextManager[dict[str, float]] = (
        _peak_rss(route) if watch_rss else contextlib.nullcontext(growth_by_part)
    )
    with watching as growth:
        started = time.perf_counter()
        result = subprocess.run(
            args,
            env=route.libpq_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            timeout=600,
            check=False,
        )
        elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise BenchError(f"COPY via {route.name} failed:\n{result.stderr}\n{route.relay_report()}")
    return CopyResult(rows * ROW_BYTES / _MB / elapsed, growth)


def _connect(route: Route) -> psycopg.Connection[TupleRow]:
    return psycopg.connect(route.conninfo(), autocommit=True, connect_timeout=60)


@contextlib.contextmanager
def _failures_name_the_route(route: Route) -> Iterator[None]:
    try:
        yield
    except psycopg.Error as exc:
        message = f"{type(exc).__name__} via {route.name}: {exc}"
        raise BenchError(f"{message}\n{route.relay_report()}") from exc


def relay_cpu(route: Route, round_trips: int) -> RelayCpu:
    """CPU of the relays over ``round_trips`` simple-query round trips, connection set up first."""
    with (
        _failures_name_the_route(route),
        psycopg.connect(
            route.conninfo(), autocommit=True, cursor_factory=psycopg.ClientCursor
        ) as conn,
    ):
        conn.execute("SELECT 1").fetchall()
        parts = route.relay_processes()
        before = {part: _cpu_seconds(procs) for part, procs in parts.items()}
        for i in range(round_trips):
            aid = 1 + (i * 7919) % 100_000
            # ClientCursor: the value is merged here and sent as one simple-protocol Query.
            conn.execute("SELECT abalance FROM pgbench_accounts WHERE aid = %s", (aid,)).fetchall()
        after = {part: _cpu_seconds(procs) for part, procs in parts.items()}
    return RelayCpu(
        {part: (after[part] - before[part]) * 1000 / round_trips * 1000 for part in parts}
    )


def idle_sessions(route: Route, sessions: int, *, settle: float = 1.0) -> IdleSessions:
    """Open ``sessions`` connections (8 at a time), leave them idle, read the relays' RSS."""
    parts = route.relay_processes()
    baseline = {part: _rss(procs) for part, procs in parts.items()}
    conns: list[psycopg.Connection[TupleRow]] = []
    try:
        with ThreadPoolExecutor(max_workers=8, thread_name_prefix="idle-open") as pool:
            futures = [pool.submit(_connect, route) for _ in range(sessions)]
        errors: list[BaseException] = []
        for future in futures:
            if (error := future.exception()) is not None:
                errors.append(error)
            else:
                conns.append(future.result())
        if errors:
            raise BenchError(
                f"{len(errors)} of {sessions} idle sessions via {route.name} failed: {errors[0]}"
                f"\n{route.relay_report()}"
            )
        time.sleep(settle)  # let the relays finish their per-session bookkeeping
        parts = route.relay_processes()  # sshd may have forked meanwhile
        rss = {part: _rss(procs) for part, procs in parts.items()}
    finally:
        for conn in conns:
            conn.close()
    return IdleSessions(
        {part: value / _MIB for part, value in rss.items()},
        {part: (rss[part] - baseline[part]) / 1024 / sessions for part in rss},
    )
