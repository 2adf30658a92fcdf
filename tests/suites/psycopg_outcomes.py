"""A pytest plugin loaded into a run of a peer's suite (``-p psycopg_outcomes``): one JSON line per
finished test, in the file named by ``WARDGATE_SUITE_OUTCOMES``.

The driver (``psycopg_compare``) reads the file while it grows, for its progress line and its
comparison; a line per test, written as the test ends, means that a run cut short still tells what
it ran. Loaded by module name because the suite's own ``tests`` package shadows ours in that run.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

OUTCOMES_ENV = "WARDGATE_SUITE_OUTCOMES"
_MESSAGE_MAX = 200


class OutcomeRecorder:
    def __init__(self, path: str) -> None:
        self._out = open(path, "a", buffering=1)  # noqa: SIM115 (closed at unconfigure)
        self._outcomes: dict[str, tuple[str, str]] = {}
        self._seconds: dict[str, float] = {}

    def close(self) -> None:
        self._out.close()

    def _write(self, record: dict[str, Any]) -> None:
        self._out.write(json.dumps(record) + "\n")

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        # The suite marks wall-clock tests `timing` ("can fail on cheese hardware").
        timing = [i.nodeid for i in session.items if i.get_closest_marker("timing")]
        self._write({"collected": len(session.items), "timing": timing})

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self._seconds[report.nodeid] = self._seconds.get(report.nodeid, 0.0) + report.duration
        was_xfail = hasattr(report, "wasxfail")
        if report.failed:
            outcome = "failed" if report.when == "call" else "error"
        elif report.skipped:
            outcome = "xfailed" if was_xfail else "skipped"
        elif report.when == "call":
            outcome = "xpassed" if was_xfail else "passed"
        else:
            return
        # A teardown error after a passed call makes the test fail; nothing undoes a failure.
        if self._outcomes.get(report.nodeid, ("",))[0] not in ("failed", "error"):
            self._outcomes[report.nodeid] = (outcome, _message(report))

    def pytest_runtest_logfinish(self, nodeid: str) -> None:
        outcome, message = self._outcomes.pop(nodeid, ("error", "no report"))
        seconds = round(self._seconds.pop(nodeid, 0.0), 3)
        self._write({"test": nodeid, "outcome": outcome, "message": message, "seconds": seconds})


def _message(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple):  # a skip: (file, line, reason)
        text = str(longrepr[2])
    elif crash := getattr(longrepr, "reprcrash", None):
        text = str(crash.message)
    else:
        text = str(longrepr or "")
    first = text.strip().splitlines()[0] if text.strip() else ""
    return first[:_MESSAGE_MAX]


def pytest_configure(config: pytest.Config) -> None:
    if path := os.environ.get(OUTCOMES_ENV):
        config.pluginmanager.register(OutcomeRecorder(path), "wardgate-outcomes")


def pytest_unconfigure(config: pytest.Config) -> None:
    recorder = config.pluginmanager.get_plugin("wardgate-outcomes")
    if isinstance(recorder, OutcomeRecorder):
        recorder.close()
