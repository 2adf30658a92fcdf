"""What a column masking rule costs per statement through Wardgate
(`python -m bench.column_masking [--seconds 10]`, `make bench-column-masking`).

The `make bench` Wardgate (bench/wardgate.py: TLS, audit on, SQLite store) twice in one run:
with the bench policy, and with the bench policy plus a column rule on the column pgbench's
select-only transaction reads (`pgbench_accounts.abalance`). With the rule, the gateway checks
each statement's lineage for masked columns that select rows (gateway/policy/lineage_check.py)
and the agent follows each statement's result columns to the rule (shared/masking/planner.py)
and masks them; both are cached per statement shape. Rows: pgbench `-S` latency with one
client (simple protocol, and prepared), and throughput with 8 clients.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import sys
from pathlib import Path
from typing import Any

from bench.postgres import postgres, scratch
from bench.procs import BenchError
from bench.routes import Route
from bench.wardgate import POLICY, wardgate
from bench.workloads import select_latency, select_tps, warm_up

COLUMN_RULE = {
    "name": "balances",
    "match": {"connections": ["bench"]},
    "columns": ["pgbench_accounts.abalance"],
    "strategy": "redact",
}
ROWS = (
    ("p50", "pgbench -S, 1 client, p50 (ms)", "{:.2f}"),
    ("p99", "pgbench -S, 1 client, p99 (ms)", "{:.2f}"),
    ("p50_prepared", "pgbench -S -M prepared, p50 (ms)", "{:.2f}"),
    ("select_8", "pgbench -S, 8 clients (tps)", "{:.0f}"),
)
COLUMNS = ("bench policy", "+ column rule")


def with_column_rule() -> dict[str, Any]:
    policy = copy.deepcopy(POLICY)
    policy["masking"].append(COLUMN_RULE)
    return policy


def measure(route: Route, seconds: int, work_dir: Path) -> dict[str, float]:
    warm_up(route, 2)
    simple = select_latency(route, seconds, work_dir)
    prepared = select_latency(route, seconds, work_dir, prepared=True)
    return {
        "p50": simple.p50_ms,
        "p99": simple.p99_ms,
        "p50_prepared": prepared.p50_ms,
        "select_8": select_tps(route, 8, seconds),
    }


def table(results: dict[str, dict[str, float]]) -> str:
    head = f"{'':34}{COLUMNS[0]:>14}{COLUMNS[1]:>15}{'ratio':>8}"
    lines = [head]
    for key, label, fmt in ROWS:
        base, masked = results[COLUMNS[0]][key], results[COLUMNS[1]][key]
        cells = fmt.format(base), fmt.format(masked)
        lines.append(f"{label:34}{cells[0]:>14}{cells[1]:>15}{masked / base:>8.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.column_masking", description=__doc__)
    parser.add_argument("--seconds", type=int, default=10, help="seconds per measurement")
    args = parser.parse_args(argv)
    load = os.getloadavg()[0]
    policies = {COLUMNS[0]: POLICY, COLUMNS[1]: with_column_rule()}
    results: dict[str, dict[str, float]] = {}
    with scratch("wardgate-bench-columns-") as work_dir:
        try:
            with contextlib.ExitStack() as stack:
                pg = stack.enter_context(
                    postgres(work_dir / "postgres", max_connections=100, scale=1)
                )
                for n, (name, policy) in enumerate(policies.items()):
                    with wardgate(work_dir / f"wardgate{n}", pg, policy=policy) as wg:
                        results[name] = measure(wg.route(), args.seconds, work_dir)
        except BenchError as exc:
            print(f"bench.column_masking: {exc}", file=sys.stderr)
            return 1
    print(table(results))
    print(f"\n{os.cpu_count()} CPUs, load average {load:.1f} at the start; {args.seconds} s each")
    return 0


if __name__ == "__main__":
    sys.exit(main())
