"""psycopg's own test suite, run directly against PostgreSQL and through Wardgate, compared.

``make suite-psycopg`` runs this. It starts a throw-away PostgreSQL (initdb, scram-sha-256), a
gateway and an agent, then runs the suite's files named in its NOTICE twice with pytest: once with
a direct DSN, once with a Wardgate DSN. A client must not be able to tell it is behind Wardgate
(issue 14), so every test that passes directly should pass through Wardgate too.

The comparison is a ratchet: ``psycopg_known.txt`` lists the tests that pass directly but not yet
through Wardgate, each with its cause. The run fails when a test that passes directly fails through
Wardgate and is not listed, and when a listed test passes through Wardgate (remove it: the list
only shrinks), unless its reason starts with ``flaky:``. A test the suite itself marks ``timing``
(wall-clock windows of tens of milliseconds, "can fail on cheese hardware") is shown when it
differs but does not break the ratchet.

The suite is a peer's code, used from where it lies (never copied into the project), with its own
rootdir and an empty configuration, so the project's pytest settings do not apply to it.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from psycopg.conninfo import make_conninfo

from gateway.crypto import SecretBox
from tests.fixtures.postgres import PostgresServer, running_server
from tests.fixtures.wardgate import ADMIN_TOKEN, GatewayProc, Wardgate
from tests.suites.psycopg_outcomes import OUTCOMES_ENV

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
KNOWN = HERE / "psycopg_known.txt"
WORK = REPO / "build" / "suite-psycopg"

# The files the suite's NOTICE names for the comparison.
FILES = (
    "tests/test_copy.py",
    "tests/test_cursor.py",
    "tests/test_pipeline.py",
    "tests/test_prepared.py",
    "tests/test_notify.py",
    "tests/test_transaction.py",
    "tests/test_connection.py",
    "tests/test_concurrency.py",
    "tests/test_copy_async.py",
    "tests/test_pipeline_async.py",
    "tests/test_cursor_async.py",
)
# The suite's tests that cut the connection put pproxy in front of the server, and it speaks
# only plaintext (sslmode=disable): through Wardgate they need a connection that allows it.
PROXY_MARK = "proxy"
PROGRESS_EVERY = 20.0  # seconds between progress lines


@dataclass
class Outcome:
    outcome: str
    message: str = ""


@dataclass
class Run:
    side: str
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    collected: dict[str, int] = field(default_factory=dict)  # per pytest invocation
    timing: set[str] = field(default_factory=set)  # tests the suite marks timing-based
    seconds: float = 0.0
    stalled: bool = False

    def counts(self) -> collections.Counter[str]:
        return collections.Counter(o.outcome for o in self.outcomes.values())

    def passed(self, test: str) -> bool:
        found = self.outcomes.get(test)
        return found is not None and found.outcome == "passed"


@dataclass(frozen=True)
class Part:
    """One pytest invocation of a side: a DSN and which tests use it."""

    dsn: str
    mark: str | None = None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make suite-psycopg", description=__doc__.split("\n")[0])
    parser.add_argument("--suite", type=Path, required=True, help="the psycopg suite's directory")
    parser.add_argument("--known", type=Path, default=KNOWN)
    parser.add_argument("--timeout", type=int, default=30, help="seconds per test (pytest-timeout)")
    parser.add_argument("--files", nargs="*", default=list(FILES), help="suite files to run")
    args = parser.parse_args(argv)
    suite: Path = args.suite.resolve()
    if not (suite / "NOTICE").is_file() or not (suite / "tests" / "conftest.py").is_file():
        print(f"psycopg's suite not found in {suite}: set SUITES to the folder holding psycopg/")
        return 2
    known = read_known(args.known)
    WORK.mkdir(parents=True, exist_ok=True)
    try:
        with servers() as (pg, gw):
            direct = run_side("direct", suite, args.files, args.timeout, [Part(pg.dsn())])
            through = run_side(
                "wardgate",
                suite,
                args.files,
                args.timeout,
                [
                    Part(gateway_dsn(gw, "psycopg"), f"not {PROXY_MARK}"),
                    Part(gateway_dsn(gw, "psycopg-plain"), PROXY_MARK),
                ],
            )
    except (pytest.fail.Exception, TimeoutError, RuntimeError, OSError) as exc:
        print(f"could not start the servers: {exc}")
        return 2
    return compare(direct, through, known, args.known)


@contextlib.contextmanager
def servers() -> Iterator[tuple[PostgresServer, GatewayProc]]:
    """A PostgreSQL server and a gateway with an agent and two connections to it."""
    print("starting PostgreSQL, a gateway and an agent", flush=True)
    with running_server() as server:
        direct = server.create_database("psycopg_direct")
        server.create_database("psycopg_wardgate")
        wg_dir = WORK / "wardgate"
        if wg_dir.exists():
            subprocess.run(["rm", "-rf", str(wg_dir)], check=True)
        wg_dir.mkdir()
        wg = Wardgate(wg_dir)
        try:
            gw = wg.gateway(secret_key=SecretBox.generate_key())
            wg.agent(gw, gw.create_agent("default"), wait="default")
            for name, plaintext in (("psycopg", False), ("psycopg-plain", True)):
                gw.create_connection(
                    name=name,
                    type="postgres",
                    host=server.host,
                    port=server.port,
                    database="psycopg_wardgate",
                    username=server.user,
                    password=server.password,
                    options={"allow_plaintext": "true"} if plaintext else {},
                )
            yield direct, gw
        finally:
            wg.close()


def gateway_dsn(gw: GatewayProc, connection: str) -> str:
    return make_conninfo(
        "",
        host="127.0.0.1",
        port=gw.public_port,
        dbname=connection,
        user="admin",
        password=ADMIN_TOKEN,
        sslmode="verify-full",  # the suite's proxy rewrites it to disable
        sslrootcert=str(gw.ca_path),
    )


def run_side(side: str, suite: Path, files: Sequence[str], timeout: int, parts: list[Part]) -> Run:
    run = Run(side)
    started = time.monotonic()
    for n, part in enumerate(parts):
        run_part(run, f"{side}-{n}", suite, files, timeout, part)
    run.seconds = time.monotonic() - started
    print(f"[{side}] done in {_duration(run.seconds)}: {_summary(run)}", flush=True)
    return run


def run_part(
    run: Run, name: str, suite: Path, files: Sequence[str], timeout: int, part: Part
) -> None:
    outcomes_path = WORK / f"{name}.jsonl"
    outcomes_path.unlink(missing_ok=True)
    ini = WORK / "pytest.ini"  # empty of settings: the suite runs as its own project would
    ini.write_text(f"[pytest]\ncache_dir = {WORK / 'cache'}\n")
    argv = [
        sys.executable, "-m", "pytest", *files,
        "-c", str(ini), "--rootdir", str(suite),
        "-p", "psycopg_outcomes", "-p", "no:asyncio",  # the suite runs its async tests on anyio
        "--test-dsn", part.dsn,
        f"--timeout={timeout}", "--timeout-method=signal",
        "-q", "-rfE",
    ]  # fmt: skip
    if part.mark:
        argv += ["-m", part.mark]
    env = {
        **os.environ,
        OUTCOMES_ENV: str(outcomes_path),
        # psycopg_outcomes; the suite's tests/ comes from the rootdir.
        "PYTHONPATH": f"{_hide_uvloop()}{os.pathsep}{HERE}",
        "PYTHONDONTWRITEBYTECODE": "1",  # the suite's folder is not ours to write to
    }
    env.pop("PSYCOPG_TEST_DSN", None)
    log = WORK / f"{name}.log"
    print(
        f"[{run.side}] running{f' -m {part.mark!r}' if part.mark else ''}; log: {log}", flush=True
    )
    # A test pytest-timeout cannot interrupt (blocked in C) would stop the run: give up on the
    # run when no test has finished for a while, and count what did not run as not passed.
    stall_limit = 2 * timeout + 60
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv, cwd=suite, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        seen = 0
        last_progress = last_change = time.monotonic()
        while True:
            try:
                proc.wait(timeout=2)
                finished = True
            except subprocess.TimeoutExpired:
                finished = False
            lines = _read_lines(outcomes_path)
            now = time.monotonic()
            if len(lines) > seen:
                seen, last_change = len(lines), now
            if finished or now - last_progress >= PROGRESS_EVERY:
                _absorb(run, name, lines)
                print(f"[{run.side}] {_summary(run)}", flush=True)
                last_progress = now
            if finished:
                break
            if now - last_change > stall_limit:
                print(f"[{run.side}] no test finished in {stall_limit}s: stopping this run")
                run.stalled = True
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                _absorb(run, name, _read_lines(outcomes_path))
                break


def _hide_uvloop() -> Path:
    """A folder whose ``uvloop`` cannot be imported, to put first on the suite's path.

    pproxy installs uvloop whenever it can import it, then calls ``asyncio.get_event_loop()``,
    which uvloop refuses outside a running loop: the suite's proxy dies at start. The project
    installs uvloop (the gateway runs on it); the suite's own environment does not.
    """
    shim = WORK / "hide-uvloop"
    shim.mkdir(exist_ok=True)
    (shim / "uvloop.py").write_text(
        'raise ModuleNotFoundError("hidden from the suite: see psycopg_compare", name="uvloop")\n'
    )
    return shim


def _read_lines(path: Path) -> list[str]:
    if not path.exists():
        return []
    # Only whole lines: the last one may be half written.
    return path.read_text().splitlines(keepends=True)


def _absorb(run: Run, name: str, lines: list[str]) -> None:
    for line in lines:
        if not line.endswith("\n"):
            continue
        record = json.loads(line)
        if "collected" in record:
            run.collected[name] = record["collected"]
            run.timing.update(record.get("timing", ()))
        else:
            run.outcomes[record["test"]] = Outcome(record["outcome"], record["message"])


def _summary(run: Run) -> str:
    counts = run.counts()
    rest = sum(n for k, n in counts.items() if k not in ("passed", "failed", "skipped"))
    return (
        f"{len(run.outcomes)}/{sum(run.collected.values())} tests: {counts['passed']} passed, "
        f"{counts['failed']} failed, {counts['skipped']} skipped, {rest} other"
    )


def _duration(seconds: float) -> str:
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


def read_known(path: Path) -> dict[str, str]:
    """The known-differences list: ``test id  # why`` per line; blank lines and ``#`` lines skip."""
    known: dict[str, str] = {}
    if not path.exists():
        return known
    for line in path.read_text().splitlines():
        test, _, why = line.partition(" #")
        if test.strip() and not test.lstrip().startswith("#"):
            known[test.strip()] = why.strip()
    return known


def _flaky(why: str) -> bool:
    return why.startswith("flaky:")


def compare(direct: Run, through: Run, known: dict[str, str], known_path: Path) -> int:
    print()
    print(f"{'':10} {'passed':>7} {'failed':>7} {'skipped':>7} {'other':>6}  time")
    for run in (direct, through):
        c = run.counts()
        rest = sum(n for k, n in c.items() if k not in ("passed", "failed", "skipped"))
        stalled = "  (stopped: a test hung)" if run.stalled else ""
        print(
            f"{run.side:10} {c['passed']:7} {c['failed']:7} {c['skipped']:7} {rest:6}  "
            f"{_duration(run.seconds)}{stalled}"
        )
    lost = sorted(t for t in direct.outcomes if direct.passed(t) and not through.passed(t))
    # A test the suite itself marks timing-based measures wall-clock time in windows of tens
    # of milliseconds, which the extra hop may or may not cross on a loaded machine: shown,
    # not counted against the ratchet.
    new = [t for t in lost if t not in known and t not in through.timing]
    # A flaky test may pass through Wardgate in one run and not the next: it stays listed.
    fixed = sorted(t for t, why in known.items() if through.passed(t) and not _flaky(why))
    print(
        f"\npass directly, not through Wardgate: {len(lost)} "
        f"({len(lost) - len(new)} known or marked timing by the suite)"
    )
    for test in lost:
        got = through.outcomes.get(test, Outcome("not run"))
        tag = "NEW  " if test in new else "known" if test in known else "timing"
        print(f"  {tag} {test}: {got.outcome}: {known.get(test) or got.message}")
    if fixed:
        print(f"\npass through Wardgate now, remove from {known_path.name}: {len(fixed)}")
        for test in fixed:
            print(f"  {test}")
    if new or fixed:
        print(f"\nratchet broken: {len(new)} new differences, {len(fixed)} fixed but still listed")
        return 1
    print("\nratchet holds: every difference is known")
    return 0


if __name__ == "__main__":
    sys.exit(main())
