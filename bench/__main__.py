"""`python -m bench [--quick] [--out FILE]`: run the benchmarks, print the table, write JSON.

Exit status 0 when the run completed (whether or not issue 4's targets are met; the table
says which are), 1 when the harness could not run, 130 on Ctrl-C. Every process started is
stopped on the way out; the working directory (logs of sshd, gateway, agent, PostgreSQL) is
removed unless the run failed or ``--keep`` is given.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

from bench import report
from bench.procs import BenchError
from bench.runner import FULL, QUICK, run

DEFAULT_OUT = Path(__file__).resolve().parent / "results.json"


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes and durations (smoke)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results JSON path")
    parser.add_argument("--repeats", type=int, help="repeats of each measurement")
    parser.add_argument("--keep", action="store_true", help="keep the working directory")
    args = parser.parse_args(argv)

    settings = QUICK if args.quick else FULL
    if args.repeats is not None:
        settings = dataclasses.replace(settings, repeats=max(1, args.repeats))
    # A SIGTERM unwinds like Ctrl-C, so every `with` block stops what it started.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)

    work_dir = Path(tempfile.mkdtemp(prefix="wardgate-bench-"))
    work_dir.chmod(0o711)  # the postgres system user must reach its data directory inside
    print(f"bench: working directory {work_dir}", file=sys.stderr)
    started = time.monotonic()
    ok = False
    try:
        rows, machine = run(settings, work_dir)
        elapsed = time.monotonic() - started
        report.write_json(
            args.out,
            rows,
            machine=machine,
            settings={"quick": args.quick, **dataclasses.asdict(settings)},
            elapsed_s=elapsed,
        )
        ok = True
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted; every started process was stopped", file=sys.stderr)
        return 130
    finally:
        if ok and not args.keep:
            shutil.rmtree(work_dir, ignore_errors=True)
        else:
            print(f"bench: logs and data kept in the working directory {work_dir}", file=sys.stderr)

    print(report.table(rows))
    facts = ", ".join(f"{key} {value}" for key, value in machine.items())
    print(f"\n{facts}; {elapsed:.0f} s; results in {os.path.relpath(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
