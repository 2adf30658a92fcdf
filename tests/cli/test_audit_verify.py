"""`wardgate audit verify`: what it says about an intact, an edited and a cut log.

Offline (`--store`, a real SQLite store written by `Store.append_audit`) and through a running
gateway's API; the log is tampered with in SQL, as someone with the database file would.
"""

from __future__ import annotations

import re
import sqlite3
import subprocess
from pathlib import Path

import pytest

from gateway.store import Store
from tests.fixtures.wardgate import WARDGATE, Wardgate


def _verify(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*WARDGATE, "audit", "verify", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "wardgate.db"
    with Store.open(f"sqlite:///{path}") as store:
        for i in range(42):
            store.append_audit("test.event", actor="alice", data={"i": i})
    return path


def _tamper(db: Path, statement: str) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute(statement)


def test_an_intact_log_says_how_many_events_were_checked(db: Path) -> None:
    out = _verify("--store", f"sqlite:///{db}")
    assert out.returncode == 0, out.stderr
    assert out.stdout == "audit log intact: 42 events checked\n"


@pytest.mark.parametrize(
    ("statement", "message"),
    [
        (
            "UPDATE audit_events SET actor = 'mallory' WHERE seq = 7",
            "audit log TAMPERED: event 7 was edited (its hash does not match its content) "
            "(7 events checked)\n",
        ),
        (
            "DELETE FROM audit_events WHERE seq = 7",
            "audit log TAMPERED: event 7 is missing (deleted from the log) (7 events checked)\n",
        ),
        (
            "DELETE FROM audit_events WHERE seq > 40",
            "audit log TAMPERED: events 41 to 42 are missing (deleted from the log) "
            "(40 events checked)\n",
        ),
    ],
    ids=["edited", "deleted-in-the-middle", "deleted-at-the-end"],
)
def test_a_tampered_log_names_the_event_and_what_happened_to_it(
    db: Path, statement: str, message: str
) -> None:
    _tamper(db, statement)
    out = _verify("--store", f"sqlite:///{db}")
    assert out.returncode == 1
    assert out.stdout == ""
    assert out.stderr == message


@pytest.mark.e2e
def test_the_gateway_api_reports_the_same(wardgate: Wardgate) -> None:
    gw = wardgate.gateway()
    gw.create_connection(name="echo", host="127.0.0.1", port=9)  # a second event at least
    intact = wardgate.cli(gw, "audit", "verify")
    assert intact.returncode == 0, intact.stderr
    assert re.fullmatch(r"audit log intact: ([2-9]|\d\d+) events checked\n", intact.stdout)
    _tamper(gw.data_dir / "wardgate.db", "DELETE FROM audit_events WHERE seq = 1")
    with gw.api() as api:
        report = api.get("/v1/audit/verify").json()
    assert report["intact"] is False and report["first_bad_seq"] == 1
    assert report["problem"] == "missing" and report["checked"] == 1
    out = wardgate.cli(gw, "audit", "verify")
    assert out.returncode == 1
    assert "audit log TAMPERED: event 1 is missing (deleted from the log)" in out.stderr
