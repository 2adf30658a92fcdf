"""`wardgate audit verify`: what it says about an intact, an edited and a cut log.

Offline (`--store`, a real SQLite store written by `store.audit.append`) and through a running
gateway's API; the log is tampered with in SQL, as someone with the database file would.
"""

from __future__ import annotations

import re
import sqlite3
import subprocess
from pathlib import Path

import alembic.command
import alembic.script
import pytest
import sqlalchemy as sa

from gateway.store import Store
from gateway.store.store import alembic_config
from tests.fixtures.postgres import PostgresServer
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
            store.audit.append("test.event", actor="alice", data={"i": i})
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


# ---- verifying is read-only ----------------------------------------------------------


def _snapshot(directory: Path) -> dict[str, bytes]:
    """The database and its write-ahead log, when it holds anything (a reader of a WAL
    database may create an empty one, and the shared-memory index, -shm)."""
    files = [directory.glob("*.db"), directory.glob("*.db-wal")]
    return {p.name: p.read_bytes() for group in files for p in group if p.stat().st_size}


def test_verifying_writes_nothing_to_the_store(db: Path) -> None:
    before = _snapshot(db.parent)
    out = _verify("--store", f"sqlite:///{db}")
    assert out.returncode == 0, out.stderr
    assert _snapshot(db.parent) == before


def test_a_missing_store_file_is_not_created(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "wardgate.db"
    out = _verify("--store", f"sqlite:///{path}")
    assert out.returncode == 1
    assert out.stdout == ""
    assert out.stderr == (
        f"Error: cannot verify sqlite:///{path}: no store at {path}: the file does not exist\n"
    )
    assert not path.parent.exists()


def _at_revision(url: str, revision: str) -> None:
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            alembic.command.upgrade(alembic_config(conn), revision)
    finally:
        engine.dispose()


def _schema_version(url: str) -> str | None:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            if not sa.inspect(conn).has_table("alembic_version"):
                return None
            return conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
    finally:
        engine.dispose()


def test_a_store_of_another_schema_version_is_refused_not_migrated(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    _at_revision(url, "0004")
    before = _snapshot(tmp_path)
    out = _verify("--store", url)
    assert out.returncode == 1
    assert out.stdout == ""
    head = alembic.script.ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert out.stderr.startswith(
        f"Error: cannot verify {url}: the store's schema is at version 0004, "
        f"this wardgate reads {head}"
    ), out.stderr
    assert out.stderr.count("\n") == 1
    assert _schema_version(url) == "0004"
    assert _snapshot(tmp_path) == before


@pytest.mark.e2e
def test_an_empty_postgresql_database_is_refused_not_migrated(postgres_db: PostgresServer) -> None:
    out = _verify("--store", postgres_db.url())
    assert out.returncode == 1
    assert out.stdout == ""
    shown = sa.make_url(postgres_db.url()).render_as_string(hide_password=True)
    assert out.stderr == (
        f"Error: cannot verify {shown}: not a Wardgate store (it has no schema version); "
        "check the store URL\n"
    )
    assert postgres_db.password not in out.stderr
    engine = sa.create_engine(postgres_db.url())
    try:
        with engine.connect() as conn:
            assert sa.inspect(conn).get_table_names() == []
    finally:
        engine.dispose()


@pytest.mark.e2e
def test_a_postgresql_store_verifies_read_only(postgres_db: PostgresServer) -> None:
    with Store.open(postgres_db.url()) as store:
        for i in range(3):
            store.audit.append("test.event", actor="alice", data={"i": i})
    out = _verify("--store", postgres_db.url())
    assert out.returncode == 0, out.stderr
    assert out.stdout == "audit log intact: 3 events checked\n"
