"""Member-to-member forwarding: what a session pays when it lands on a gateway member that
its agent cannot reach (`python -m bench.forward [--seconds 10]`, `make bench-forward`).

Two members over one PostgreSQL store (bench/wardgate.py: TLS, the realistic policy, audit
on). The agent is connected to the first; the second advertises an agent address where
nothing listens (`fleet.advertise`), as in a network split, so its sessions run through the
first over the member link (gateway/fleet/forward.py). Rows: pgbench `-S` latency with one
client, and throughput with 8; connection setup (`-C`, `SELECT 1`). Columns: direct to
PostgreSQL, Wardgate on the member with the agent, Wardgate forwarded, and forwarded over
local (what the extra hop costs).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
from pathlib import Path

from bench.postgres import postgres, scratch
from bench.procs import BenchError, free_port
from bench.routes import DIRECT, Route
from bench.wardgate import member, wardgate
from bench.workloads import connection_rate, select_latency, select_tps, warm_up

COLUMNS = ("direct", "local", "forwarded")


def measure(route: Route, seconds: int, work_dir: Path) -> dict[str, float]:
    warm_up(route, 2)
    latency = select_latency(route, seconds, work_dir)
    return {
        "p50": latency.p50_ms,
        "p99": latency.p99_ms,
        "select_8": select_tps(route, 8, seconds),
        "connect_8": connection_rate(route, 8, seconds, work_dir),
    }


ROWS = (
    ("p50", "pgbench -S, 1 client, p50 (ms)", "{:.2f}"),
    ("p99", "pgbench -S, 1 client, p99 (ms)", "{:.2f}"),
    ("select_8", "pgbench -S, 8 clients (tps)", "{:.0f}"),
    ("connect_8", "connections/s, 8 clients (-C)", "{:.0f}"),
)


def table(results: dict[str, dict[str, float]]) -> str:
    lines = [f"{'':34}{'direct':>9}{'local':>9}{'forwarded':>11}{'fwd/local':>11}"]
    for key, label, fmt in ROWS:
        cells = [fmt.format(results[c][key]) for c in COLUMNS]
        ratio = results["forwarded"][key] / results["local"][key]
        lines.append(f"{label:34}{cells[0]:>9}{cells[1]:>9}{cells[2]:>11}{ratio:>11.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.forward", description=__doc__)
    parser.add_argument("--seconds", type=int, default=10, help="seconds per measurement")
    args = parser.parse_args(argv)
    load = os.getloadavg()[0]
    with scratch("wardgate-bench-forward-") as work_dir:
        try:
            with contextlib.ExitStack() as stack:
                pg = stack.enter_context(
                    postgres(work_dir / "postgres", max_connections=200, scale=1)
                )
                near = stack.enter_context(
                    wardgate(work_dir / "near", pg, store=pg.new_store("wardgate_forward"))
                )
                split = f"127.0.0.1:{free_port()}"  # nothing listens: the agent never gets in
                far = stack.enter_context(
                    member(near, work_dir / "far", advertise=split, agent_warmup=0)
                )
                local = near.route()
                forwarded = dataclasses.replace(
                    far.route(), relays={**local.relays, "far": far.gateway}
                )
                plain = {"sslmode": "disable"}
                direct = Route(DIRECT, pg.host, pg.port, pg.role, pg.password, pg.database, plain)
                routes = {"direct": direct, "local": local, "forwarded": forwarded}
                results = {name: measure(r, args.seconds, work_dir) for name, r in routes.items()}
        except BenchError as exc:
            print(f"bench.forward: {exc}", file=sys.stderr)
            return 1
    print(table(results))
    print(
        f"\n{os.cpu_count()} CPUs, load average {load:.1f} at the start; "
        f"{args.seconds} s per measurement; PostgreSQL store"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
