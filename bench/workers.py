"""`wardgate gateway --workers`: 1 and 2 workers on one PostgreSQL store, compared
(`python -m bench.workers [--seconds 10]`, `make bench-workers`).

The same Wardgate as in `make bench` (bench/wardgate.py: TLS, the realistic policy, audit
on), except that its store is PostgreSQL, which `--workers` needs: a database of its own
per run in the benchmark's cluster. Each row is pgbench through the public port: `-S` with
8 and 32 clients, and connection setup (`-C`, `SELECT 1`, 8 clients). The last column is
2 workers over 1: what the second core buys. On a machine with fewer free cores than
workers plus PostgreSQL plus pgbench, the processes take turns and the ratio says so.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bench.postgres import Postgres, postgres, scratch
from bench.procs import BenchError
from bench.wardgate import wardgate
from bench.workloads import _cpu_seconds, connection_rate, select_tps, warm_up

ROWS = (
    ("select_8", "pgbench -S, 8 clients (tps)"),
    ("select_32", "pgbench -S, 32 clients (tps)"),
    ("connect_8", "connections/s, 8 clients (-C)"),
)
PARTS = ("gateway", "agent")


def measure(work_dir: Path, pg: Postgres, workers: int, seconds: int) -> dict[str, float]:
    store = pg.new_store(f"wardgate_{workers}w")
    with wardgate(work_dir / f"wardgate-{workers}w", pg, store=store, workers=workers) as wg:
        route = wg.route()
        warm_up(route, 2)
        runs: dict[str, Callable[[], float]] = {
            "select_8": lambda: select_tps(route, 8, seconds),
            "select_32": lambda: select_tps(route, 32, seconds),
            "connect_8": lambda: connection_rate(route, 8, seconds, work_dir),
        }
        results = {}
        for key, workload in runs.items():
            parts = route.relay_processes()  # gateway: the supervisor and its workers
            cpu = {part: _cpu_seconds(procs) for part, procs in parts.items()}
            started = time.monotonic()
            results[key] = workload()
            elapsed = time.monotonic() - started
            for part, procs in parts.items():
                results[f"{key}_{part}"] = (_cpu_seconds(procs) - cpu[part]) / elapsed
        return results


def table(results: dict[int, dict[str, float]]) -> str:
    """Each workload's rate with 1 and 2 workers and the ratio, and the cores the gateway's
    processes and the agent kept busy meanwhile (1.00: one core's worth), 1 / 2 workers."""
    head = (
        f"{'':32}{'1 worker':>9}{'2 workers':>10}{'2/1':>6}{'gateway cores':>15}{'agent cores':>13}"
    )
    lines = [head]
    for key, label in ROWS:
        one, two = results[1][key], results[2][key]
        cores = [f"{results[1][f'{key}_{p}']:.2f}/{results[2][f'{key}_{p}']:.2f}" for p in PARTS]
        lines.append(
            f"{label:32}{one:>9.0f}{two:>10.0f}{two / one:>6.2f}{cores[0]:>15}{cores[1]:>13}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.workers", description=__doc__)
    parser.add_argument("--seconds", type=int, default=10, help="seconds per measurement")
    args = parser.parse_args(argv)
    load = os.getloadavg()[0]
    with scratch("wardgate-bench-workers-") as work_dir:
        try:
            with contextlib.ExitStack() as stack:
                pg = stack.enter_context(
                    postgres(work_dir / "postgres", max_connections=200, scale=1)
                )
                results = {n: measure(work_dir, pg, n, args.seconds) for n in (1, 2)}
        except BenchError as exc:
            print(f"bench.workers: {exc}", file=sys.stderr)
            return 1
    print(table(results))
    print(
        f"\n{os.cpu_count()} CPUs, load average {load:.1f} at the start; "
        f"{args.seconds} s per measurement; PostgreSQL store"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
