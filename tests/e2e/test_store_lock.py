"""Another process holding SQLite's write lock, end to end: the gateway waits, it does not stall.

Every write of a gateway process goes to the store's one writer thread
(gateway/store/writer.py). While another process holds the database's write lock (an
operator's `sqlite3` shell, a backup), those writes queue; the event loop keeps serving:
agents' pings are answered (none is dropped for silence), `/livez` answers, and once the lock
is released the queued writes land in order: a session that was opening opens, an
administrator's change is made, and the audit chain verifies.
"""

from __future__ import annotations

import concurrent.futures
import sqlite3
import ssl
import subprocess
import time
from typing import Any

import httpx
import psycopg
import pytest

from gateway.crypto import SecretBox
from tests.fixtures.postgres import PostgresServer
from tests.fixtures.wardgate import WARDGATE, Wardgate, wait_for

pytestmark = pytest.mark.e2e

PING_INTERVAL = 0.2  # the agent is dropped after 3 silent pings: 0.6 s
HELD_PINGS = 15  # the lock is held for this many ping intervals at least


def test_a_write_lock_held_elsewhere_stalls_no_agent_and_no_probe(
    wardgate: Wardgate, postgres_server: PostgresServer
) -> None:
    gw = wardgate.gateway(ping_interval=PING_INTERVAL, secret_key=SecretBox.generate_key())
    wardgate.agent(gw, gw.create_agent("default"), wait="default")
    postgres_server.drop_database("locked")
    server = postgres_server.create_database("locked")
    gw.create_connection(**server.connection_spec("pg-locked"))
    store = gw.data_dir / "wardgate.db"

    def open_session() -> Any:
        with psycopg.connect(gw.pg_conninfo("pg-locked"), connect_timeout=60) as conn:
            return conn.execute("select 'opened'").fetchone()

    def admin_change() -> int:
        with gw.api() as api:
            spec = {"name": "made-later", "host": "127.0.0.1", "port": 1}
            return api.post("/v1/connections", json=spec).status_code

    holder = sqlite3.connect(store, isolation_level=None, timeout=30)
    pool = concurrent.futures.ThreadPoolExecutor(2)
    try:
        holder.execute("BEGIN IMMEDIATE")  # the database's one write lock, held here
        held_since = time.monotonic()
        session = pool.submit(open_session)
        change = pool.submit(admin_change)
        answered = 0
        # /livez and the agents' pings are served by the event loop: an answer within the
        # client's deadline on every try means the loop never waited for the lock.
        tls = ssl.create_default_context(cafile=str(gw.ca_path))
        with httpx.Client(verify=tls, timeout=5) as probe:
            while time.monotonic() - held_since < HELD_PINGS * PING_INTERVAL:
                reply = probe.get(f"{gw.url}/livez")
                assert reply.status_code == 200, reply.text
                answered += 1
        assert answered > 1
        assert not session.done(), "the session opened while its writes could not land"
        assert not change.done(), "an administrator's change was made without the lock"
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        pool.shutdown(wait=False)

    # The queued writes land once the lock is free.
    assert session.result(timeout=60) == ("opened",)
    assert change.result(timeout=60) == 201
    with gw.api() as api:
        assert "made-later" in {c["name"] for c in api.get("/v1/connections").json()}
    assert gw.agents()["default"]["connected"] is True
    wait_for(lambda: gw.audit("session.open"), "the session's open event")
    assert len(gw.audit("agent.connected")) == 1
    assert gw.audit("agent.disconnected") == []
    assert "dropped" not in gw.log(tail=100_000)
    verify = subprocess.run(
        [*WARDGATE, "audit", "verify", "--store", f"sqlite:///{store}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert verify.returncode == 0, verify.stderr
