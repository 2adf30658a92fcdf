"""Audit appends per second with 1, 2 and 3 gateway members on one PostgreSQL store
(`python -m bench.audit [--members 1,2,3] [--seconds 5] [--writers 32]`).

Every append to the one audit chain locks the chain's head row until its transaction
commits (gateway/store/audit_writer.py), so members take turns. This measures what that
costs: each member is a process of its own with the gateway's `Auditor` (group commit:
what arrives while a commit runs goes into the next), and `--writers` tasks per member each
await `record()` in a loop, as sessions do before forwarding a statement. It prints events
per second for the fleet, the latency of one `record()` (p50, p99) and commits per second,
then checks that the chain verifies. PostgreSQL runs as in `make bench`: a throw-away
cluster on this machine, durability off, so the numbers are the chain's and the CPU's, not
the disk's. Nothing here is asserted; it is for decisions and before/after comparisons.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time

from bench.postgres import postgres, scratch
from bench.procs import BenchError
from gateway.audit import Auditor
from gateway.store import Store

# ---- one member (a child process) ---------------------------------------------------------


async def _member(url: str, seconds: float, writers: int) -> dict[str, object]:
    store = Store.open(url)
    auditor = Auditor(store)
    await auditor.record("bench.member_ready")
    print("ready", flush=True)
    await asyncio.to_thread(sys.stdin.readline)  # "go": every member starts together
    latencies: list[float] = []
    deadline = time.monotonic() + seconds

    async def writer(n: int) -> None:
        while time.monotonic() < deadline:
            started = time.perf_counter()
            await auditor.record("bench.append", actor="bench", writer=n)
            latencies.append(time.perf_counter() - started)

    async with asyncio.TaskGroup() as tg:
        for n in range(writers):
            tg.create_task(writer(n))
    await auditor.aclose()
    store.close()
    return {"events": len(latencies), "latencies": latencies}


# ---- the fleet ------------------------------------------------------------------------------


def _run_fleet(url: str, members: int, seconds: float, writers: int) -> dict[str, float]:
    argv = [sys.executable, "-m", "bench.audit", "--member", url, str(seconds), str(writers)]
    procs = [
        subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for _ in range(members)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != "ready":
                raise BenchError("a member did not start (see its output above)")
        started = time.monotonic()
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        results = [json.loads(proc.communicate(timeout=seconds + 120)[0]) for proc in procs]
        elapsed = time.monotonic() - started
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    latencies = sorted(x for r in results for x in r["latencies"])
    events = sum(r["events"] for r in results)
    return {
        "members": members,
        "events_per_s": events / elapsed,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))],
    }


def _verify(url: str) -> str:
    store = Store.open_read_only(url)
    try:
        bad = store.audit.verify()
        return "intact" if bad is None else f"BROKEN at seq {bad}"
    finally:
        store.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.audit", description=__doc__)
    parser.add_argument("--members", default="1,2,3", help="member counts to run, in order")
    parser.add_argument("--seconds", type=float, default=5.0, help="appending time per count")
    parser.add_argument("--writers", type=int, default=32, help="concurrent writers per member")
    parser.add_argument("--member", nargs=3, help=argparse.SUPPRESS)  # a child: URL S W
    args = parser.parse_args(argv)
    if args.member:
        url, seconds, writers = args.member
        print(json.dumps(asyncio.run(_member(url, float(seconds), int(writers)))))
        return 0
    counts = [int(n) for n in args.members.split(",")]
    with (
        scratch("wardgate-bench-audit-") as tmp,
        postgres(tmp / "pg", max_connections=100, scale=1) as pg,
    ):
        url = pg.store_url()
        rows = [_run_fleet(url, n, args.seconds, args.writers) for n in counts]
        verified = _verify(url)
    print(f"{'members':>7}  {'events/s':>9}  {'record p50':>10}  {'record p99':>10}")
    for row in rows:
        print(
            f"{row['members']:>7}  {row['events_per_s']:>9.0f}  "
            f"{row['p50_ms']:>8.1f}ms  {row['p99_ms']:>8.1f}ms"
        )
    print(f"\n{args.writers} writers per member, {args.seconds:g} s each; chain: {verified}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
