"""Store tests, each run against SQLite (a file under tmp_path) and a real PostgreSQL."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import string
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import psycopg
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.store import (
    AlreadyExists,
    AuditEvent,
    ConnectionRecord,
    EventMatch,
    NotFound,
    SessionRecord,
    Store,
    StoreError,
    StoreUnavailable,
    chain,
    new_id,
)
from gateway.store import tables as t
from gateway.store.store import MIGRATIONS_DIR
from tests.fixtures.postgres import PostgresServer

T0 = dt.datetime(2025, 1, 2, 3, 4, 5, 123456, tzinfo=dt.UTC)
PLUS_TWO = dt.timezone(dt.timedelta(hours=2))


def digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: dt.datetime = T0) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float = 1.0) -> dt.datetime:
        self.now += dt.timedelta(seconds=seconds)
        return self.now


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state' / 'wardgate.db'}"
    # Looked up lazily, so a run limited to SQLite never starts PostgreSQL.
    db: PostgresServer = request.getfixturevalue("postgres_db")
    return db.url()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(store_url: str, clock: Clock) -> Iterator[Store]:
    with Store.open(store_url, clock=clock) as opened:
        yield opened


def make_session(session_id: str, **changes: Any) -> SessionRecord:
    base = SessionRecord(
        id=session_id,
        user="alice",
        connection="db1",
        protocol="postgres",
        client_addr="198.51.100.7:50000",
        started_at=T0,
    )
    return dataclasses.replace(base, **changes)


def make_connection(name: str = "db1", **changes: Any) -> ConnectionRecord:
    base = ConnectionRecord(
        name=name,
        type="postgres",
        pool="dc1",
        host="10.0.0.5",
        port=5432,
        options={"database": "app", "sslmode": "require"},
        secrets={"password": "env:DB1_PASSWORD"},
    )
    return dataclasses.replace(base, **changes)


# -- opening -------------------------------------------------------------------------------


def test_dialect_follows_the_url(store: Store, store_url: str) -> None:
    assert store.dialect == sa.make_url(store_url).get_backend_name()


def test_reopening_keeps_data_and_migrates_nothing(store_url: str) -> None:
    with Store.open(store_url) as first:
        first.agents.create("a1", "dc1", digest("s"))
    with Store.open(store_url) as second:
        agent = second.agents.get("a1")
        assert agent is not None
        assert agent.pool == "dc1"
        with second.engine.connect() as conn:
            head = ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head()
            assert conn.scalar(sa.text("SELECT version_num FROM alembic_version")) == head


def test_migrated_schema_matches_tables(store: Store) -> None:
    with store.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, t.metadata) == []


def test_concurrent_opens_migrate_once(store_url: str) -> None:
    # Gateways started together must not trip over each other creating the schema.
    def open_and_close(_: int) -> str:
        with Store.open(store_url) as opened:
            return opened.dialect

    with ThreadPoolExecutor(4) as pool:
        assert len(list(pool.map(open_and_close, range(4)))) == 4


def test_sqlite_connections_use_wal_foreign_keys_and_busy_timeout(tmp_path: Path) -> None:
    with Store.open(f"sqlite:///{tmp_path / 'w.db'}") as store, store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30_000


def test_in_memory_sqlite_is_shared_between_threads() -> None:
    with Store.open("sqlite://") as store:
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda i: store.audit.append("x", data={"i": i}), range(40)))
        assert [e.seq for e in store.audit.list_all()] == list(range(1, 41))
        assert store.audit.verify() is None


def test_unsupported_database_is_refused() -> None:
    with pytest.raises(ValueError, match="unsupported"):
        Store.open("mysql://u:p@localhost/db")


def test_closed_store_refuses_calls(store_url: str) -> None:
    store = Store.open(store_url)
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.agents.list_all()


# -- agents --------------------------------------------------------------------------------


def test_create_and_get_agent(store: Store) -> None:
    created = store.agents.create("edge-1", "dc1", digest("secret"))
    assert created.name == "edge-1"
    assert created.pool == "dc1"
    assert created.secret_hash == digest("secret")
    assert created.created_at == T0
    assert created.created_at.tzinfo is dt.UTC
    assert not created.revoked
    assert store.agents.get("edge-1") == created
    assert store.agents.get("nobody") is None


def test_agent_names_are_unique_even_after_revocation(store: Store) -> None:
    store.agents.create("edge-1", "dc1", digest("a"))
    with pytest.raises(AlreadyExists):
        store.agents.create("edge-1", "dc2", digest("b"))
    store.agents.revoke("edge-1")
    with pytest.raises(AlreadyExists):
        store.agents.create("edge-1", "dc2", digest("b"))


def test_agent_secret_must_be_a_digest(store: Store) -> None:
    with pytest.raises(ValueError, match="sha256"):
        store.agents.create("edge-1", "dc1", b"the secret itself")
    store.agents.create("edge-1", "dc1", digest("a"))
    with pytest.raises(ValueError, match="sha256"):
        store.agents.rotate_secret("edge-1", b"short")


def test_list_agents_is_sorted_by_name(store: Store) -> None:
    for name in ("b", "c", "a"):
        store.agents.create(name, "dc1", digest(name))
    assert [a.name for a in store.agents.list_all()] == ["a", "b", "c"]


def test_revoke_agent_keeps_the_first_revocation_time(store: Store, clock: Clock) -> None:
    store.agents.create("edge-1", "dc1", digest("a"))
    revoked_at = clock.advance()
    assert store.agents.revoke("edge-1").revoked_at == revoked_at
    clock.advance()
    again = store.agents.revoke("edge-1")
    assert again.revoked_at == revoked_at
    assert store.agents.get("edge-1") == again
    with pytest.raises(NotFound):
        store.agents.revoke("nobody")


def test_rotate_agent_secret_replaces_the_hash_and_unrevokes(store: Store) -> None:
    store.agents.create("edge-1", "dc1", digest("old"))
    store.agents.revoke("edge-1")
    rotated = store.agents.rotate_secret("edge-1", digest("new"))
    assert rotated.secret_hash == digest("new")
    assert not rotated.revoked
    assert store.agents.get("edge-1") == rotated
    with pytest.raises(NotFound):
        store.agents.rotate_secret("nobody", digest("x"))


# -- users and tokens ----------------------------------------------------------------------


def test_ensure_user_creates_then_updates(store: Store, clock: Clock) -> None:
    created = store.identity.ensure_user("alice", groups=("dba", "ops"))
    assert (created.name, created.is_admin, created.groups) == ("alice", False, ("dba", "ops"))
    assert created.created_at == T0
    clock.advance()
    updated = store.identity.ensure_user("alice", is_admin=True)
    assert (updated.is_admin, updated.groups, updated.created_at) == (True, (), T0)
    assert store.identity.get_user("alice") == updated
    assert store.identity.get_user("bob") is None


def test_list_users_is_sorted_by_name(store: Store) -> None:
    store.identity.ensure_user("carol")
    store.identity.ensure_user("alice", is_admin=True)
    assert [(u.name, u.is_admin) for u in store.identity.list_users()] == [
        ("alice", True),
        ("carol", False),
    ]


def test_add_token_and_find_it(store: Store) -> None:
    user = store.identity.ensure_user("alice", groups=("dba",))
    expires = dt.datetime(2030, 1, 1, 2, 0, tzinfo=PLUS_TWO)
    token = store.identity.add_token("alice", digest("tok"), expires_at=expires, label="cli")
    assert len(token.id) == 12
    assert set(token.id) <= set(string.ascii_letters + string.digits + "-_")
    assert (token.user, token.token_hash, token.label) == ("alice", digest("tok"), "cli")
    assert token.created_at == T0
    # Same instant, normalised to UTC.
    assert token.expires_at == expires
    assert token.expires_at is not None and token.expires_at.tzinfo is dt.UTC
    assert store.identity.find_token(digest("tok")) == (token, user)
    assert store.identity.find_token(digest("other")) is None
    assert store.identity.get_token(token.id) == token
    assert store.identity.list_tokens("alice") == [token]


def test_token_ids_are_distinct(store: Store) -> None:
    store.identity.ensure_user("alice")
    ids = {store.identity.add_token("alice", digest(f"t{i}")).id for i in range(20)}
    assert len(ids) == 20


def test_add_token_needs_a_user_and_a_fresh_hash(store: Store) -> None:
    with pytest.raises(NotFound):
        store.identity.add_token("nobody", digest("tok"))
    store.identity.ensure_user("alice")
    store.identity.add_token("alice", digest("tok"))
    with pytest.raises(AlreadyExists):
        store.identity.add_token("alice", digest("tok"))
    with pytest.raises(ValueError, match="sha256"):
        store.identity.add_token("alice", b"plaintext-token")
    with pytest.raises(ValueError, match="aware"):
        store.identity.add_token("alice", digest("t2"), expires_at=dt.datetime(2030, 1, 1))


def test_revoke_token(store: Store, clock: Clock) -> None:
    store.identity.ensure_user("alice")
    token = store.identity.add_token("alice", digest("tok"), expires_at=T0 + dt.timedelta(hours=1))
    assert token.valid_at(clock())
    revoked_at = clock.advance()
    store.identity.revoke_token(token.id)
    found = store.identity.find_token(digest("tok"))
    assert found is not None
    assert found[0].revoked_at == revoked_at
    assert not found[0].valid_at(clock())
    clock.advance()
    store.identity.revoke_token(token.id)  # again: no change
    assert store.identity.get_token(token.id) == found[0]
    with pytest.raises(NotFound):
        store.identity.revoke_token("nosuchtoken0")


def test_revoke_tokens_labelled_counts_only_live_matching_tokens(store: Store) -> None:
    store.identity.ensure_user("alice")
    store.identity.ensure_user("bob")
    first = store.identity.add_token("alice", digest("a1"), label="cli")
    store.identity.add_token("alice", digest("a2"), label="cli")
    store.identity.add_token("alice", digest("a3"), label="web")
    store.identity.add_token("bob", digest("b1"), label="cli")
    store.identity.revoke_token(first.id)
    assert store.identity.revoke_tokens_labelled("alice", "cli") == 1
    assert store.identity.revoke_tokens_labelled("alice", "cli") == 0
    live = {tok.label for tok in store.identity.list_tokens("alice") if tok.revoked_at is None}
    assert live == {"web"}
    bob = store.identity.find_token(digest("b1"))
    assert bob is not None and bob[0].revoked_at is None


# -- connections ---------------------------------------------------------------------------


def test_upsert_connection_reports_creation_change_and_no_change(
    store: Store, clock: Clock
) -> None:
    created, changed = store.connections.upsert(make_connection())
    assert changed
    assert created == dataclasses.replace(make_connection(), created_at=T0, updated_at=T0)

    clock.advance()
    same, changed = store.connections.upsert(make_connection())
    assert not changed
    assert same == created

    later = clock.advance()
    updated, changed = store.connections.upsert(make_connection(port=6432, options={}))
    assert changed
    assert (updated.port, updated.options) == (6432, {})
    assert (updated.created_at, updated.updated_at) == (T0, later)
    assert store.connections.get("db1") == updated


def test_upsert_connection_refuses_plaintext_secrets(store: Store) -> None:
    with pytest.raises(ValueError, match="never plaintext"):
        store.connections.upsert(make_connection(secrets={"password": "hunter2"}))
    assert store.connections.get("db1") is None
    for ref in ("env:X", "file:/run/secrets/x", "enc:QUJD"):
        store.connections.upsert(make_connection(secrets={"password": ref}))


def test_list_and_delete_connections(store: Store) -> None:
    store.connections.upsert(make_connection("zeta"))
    store.connections.upsert(make_connection("alpha", type="tcp", secrets={}))
    assert [c.name for c in store.connections.list_all()] == ["alpha", "zeta"]
    assert store.connections.delete("zeta")
    assert not store.connections.delete("zeta")
    assert store.connections.get("zeta") is None
    assert [c.name for c in store.connections.list_all()] == ["alpha"]


def test_concurrent_upserts_of_one_connection_create_it_once(store: Store) -> None:
    barrier = threading.Barrier(8)

    def upsert(_: int) -> bool:
        barrier.wait()
        return store.connections.upsert(make_connection())[1]

    with ThreadPoolExecutor(8) as pool:
        changes = list(pool.map(upsert, range(8)))
    assert changes.count(True) == 1


# -- sessions ------------------------------------------------------------------------------


def test_create_get_and_end_session(store: Store, clock: Clock) -> None:
    store.sessions.create(make_session("s1"))
    assert store.sessions.get("s1") == make_session("s1")
    assert store.sessions.get("s2") is None
    with pytest.raises(AlreadyExists):
        store.sessions.create(make_session("s1"))

    ended_at = clock.advance(30)
    store.sessions.end(
        "s1", status="failed", error="upstream reset", bytes_up=10, bytes_down=2**40, agent="a1"
    )
    ended = store.sessions.get("s1")
    assert ended == make_session(
        "s1",
        ended_at=ended_at,
        status="failed",
        error="upstream reset",
        bytes_up=10,
        bytes_down=2**40,
        agent="a1",
    )

    clock.advance()
    store.sessions.end("s1", status="closed", error=None, bytes_up=0, bytes_down=0)
    assert store.sessions.get("s1") == ended  # the first end wins


def test_end_session_keeps_the_agent_when_none_is_given(store: Store) -> None:
    store.sessions.create(make_session("s1", agent="a7"))
    store.sessions.end("s1", status="closed", error=None, bytes_up=1, bytes_down=2)
    ended = store.sessions.get("s1")
    assert ended is not None
    assert (ended.agent, ended.status) == ("a7", "closed")


def test_an_end_recorded_late_keeps_when_it_happened(store: Store, clock: Clock) -> None:
    store.sessions.create(make_session("s1"))
    happened = clock.advance(5)
    clock.advance(60)  # the store took writes again only now
    store.sessions.end(
        "s1", status="failed", error="x", bytes_up=0, bytes_down=0, ended_at=happened
    )
    ended = store.sessions.get("s1")
    assert ended is not None and ended.ended_at == happened


def test_end_session_errors(store: Store) -> None:
    with pytest.raises(NotFound):
        store.sessions.end("nope", status="closed", error=None, bytes_up=0, bytes_down=0)
    store.sessions.create(make_session("s1"))
    with pytest.raises(ValueError, match="closed or failed"):
        store.sessions.end("s1", status="open", error=None, bytes_up=0, bytes_down=0)


def test_session_times_must_be_aware(store: Store) -> None:
    with pytest.raises(ValueError, match="aware"):
        store.sessions.create(make_session("s1", started_at=T0.replace(tzinfo=None)))
    with pytest.raises(ValueError, match="aware"):
        store.sessions.list_all(since=T0.replace(tzinfo=None))


def test_list_sessions_filters_newest_first(store: Store) -> None:
    specs = [
        ("s1", "alice", "db1", 0),
        ("s2", "bob", "db1", 10),
        ("s3", "alice", "db2", 20),
        ("s4", "alice", "db1", 30),
    ]
    for session_id, user, connection, offset in specs:
        started = (T0 + dt.timedelta(seconds=offset)).astimezone(PLUS_TWO)
        store.sessions.create(
            make_session(session_id, user=user, connection=connection, started_at=started)
        )

    def ids(sessions: list[SessionRecord]) -> list[str]:
        return [s.id for s in sessions]

    assert ids(store.sessions.list_all()) == ["s4", "s3", "s2", "s1"]
    assert ids(store.sessions.list_all(user="alice")) == ["s4", "s3", "s1"]
    assert ids(store.sessions.list_all(connection="db1")) == ["s4", "s2", "s1"]
    assert ids(store.sessions.list_all(user="alice", connection="db1")) == ["s4", "s1"]
    assert ids(store.sessions.list_all(since=T0 + dt.timedelta(seconds=10))) == ["s4", "s3", "s2"]
    assert ids(store.sessions.list_all(limit=2)) == ["s4", "s3"]
    assert all(s.started_at.tzinfo is dt.UTC for s in store.sessions.list_all())


def test_list_sessions_pages_by_start_then_id(store: Store) -> None:
    # Three sessions share a start time: the id breaks the tie, so no page repeats or skips.
    for session_id, offset in [("a", 0), ("b", 10), ("c", 10), ("d", 10), ("e", 20)]:
        store.sessions.create(
            make_session(session_id, started_at=T0 + dt.timedelta(seconds=offset))
        )
    pages: list[list[str]] = []
    before = None
    while page := store.sessions.list_all(before=before, limit=2):
        pages.append([s.id for s in page])
        before = (page[-1].started_at, page[-1].id)
    assert pages == [["e", "d"], ["c", "b"], ["a"]]
    # A session started after the first page was read shifts nothing.
    store.sessions.create(make_session("z", started_at=T0 + dt.timedelta(seconds=30)))
    assert [s.id for s in store.sessions.list_all(before=(T0 + dt.timedelta(seconds=10), "d"))] == [
        "c",
        "b",
        "a",
    ]
    with pytest.raises(ValueError, match="before"):
        store.sessions.list_all(before=(T0.replace(tzinfo=None), "x"))


def test_list_sessions_by_protocol_time_and_audit_events(store: Store) -> None:
    # The console's search: filters on the session row and on its audit events, in one query
    # (so keyset pages stay whole).
    for session_id, protocol, offset in [
        ("p1", "postgres", 0),
        ("s1", "ssh", 10),
        ("p2", "postgres", 20),
    ]:
        store.sessions.create(
            make_session(
                session_id, protocol=protocol, started_at=T0 + dt.timedelta(seconds=offset)
            )
        )
    store.audit.append("pg.statement", session_id="p1", data={"text": 'select * from "Acc%"'})
    store.audit.append("pg.result", session_id="p1", data={"error": None, "masked": [{"count": 1}]})
    store.audit.append("pg.statement", session_id="p2", data={"text": "select 1"})
    store.audit.append("pg.result", session_id="p2", data={"error": "boom"})
    store.audit.append("ssh.exit", session_id="s1", data={"channel": 0, "status": 0})

    def ids(**filters: Any) -> list[str]:
        return [s.id for s in store.sessions.list_all(**filters)]

    assert ids(protocol="postgres") == ["p2", "p1"]
    assert ids(until=T0 + dt.timedelta(seconds=20)) == ["s1", "p1"]
    text = EventMatch(("pg.statement",), text='"Acc%"')  # quotes and LIKE wildcards are text
    assert ids(having=[(text,)]) == ["p1"]
    assert ids(having=[(EventMatch(("pg.statement",), text="Acc_"),)]) == []
    masked = EventMatch(("pg.result",), fragment='"masked":[')
    failed = EventMatch(("pg.result",), lacks=('"error":null',))
    assert ids(having=[(masked,)]) == ["p1"]
    assert ids(having=[(failed,)]) == ["p2"]
    assert ids(having=[(masked, failed)]) == ["p2", "p1"]  # one of a group
    assert ids(having=[(masked,), (failed,)]) == []  # every group
    store.sessions.end("s1", status="failed", error="x", bytes_up=0, bytes_down=0)
    either = EventMatch(("pg.result",), lacks=('"error":null',), or_status="failed")
    assert ids(having=[(either,)]) == ["p2", "s1"]


# -- audit log -----------------------------------------------------------------------------


def test_append_audit_chains_events(store: Store, clock: Clock) -> None:
    first = store.audit.append("agent.rejected", data={"reason": "bad secret", "n": 1.5})
    clock.advance()
    second = store.audit.append(
        "session.open", actor="alice", session_id="s1", data={"ünï": ["ç", 2]}
    )
    assert (first.seq, first.actor, first.session_id, first.ts) == (1, "-", None, T0)
    assert first.prev_hash == chain.GENESIS_HASH
    assert first.hash == chain.hash_of(first, chain.GENESIS_HASH)
    assert second.seq == 2
    assert second.prev_hash == first.hash
    assert store.audit.list_all() == [first, second]
    assert store.audit.verify() is None


def test_audit_data_is_returned_as_it_reads_back(store: Store) -> None:
    event = store.audit.append("x", data={"tuple": (1, 2), "nested": {"b": None, "a": True}})
    assert event.data == {"tuple": [1, 2], "nested": {"a": True, "b": None}}
    assert store.audit.list_all() == [event]
    with pytest.raises(ValueError):
        store.audit.append("x", data={"bad": float("nan")})
    with pytest.raises(ValueError):
        store.audit.append("x", data={"bad": float("inf")})
    with pytest.raises(TypeError):
        store.audit.append("x", data={"bad": object()})
    assert store.audit.verify() is None


def test_list_audit_filters_and_pages(store: Store) -> None:
    for i in range(10):
        store.audit.append("even" if i % 2 == 0 else "odd", session_id=f"s{i % 3}")
    assert [e.seq for e in store.audit.list_all(kind="odd")] == [2, 4, 6, 8, 10]
    assert [e.seq for e in store.audit.list_all(session_id="s0")] == [1, 4, 7, 10]
    assert [e.seq for e in store.audit.list_all(kind="even", session_id="s0")] == [1, 7]
    assert [e.seq for e in store.audit.list_all(after_seq=7)] == [8, 9, 10]
    assert [e.seq for e in store.audit.list_all(after_seq=2, limit=3)] == [3, 4, 5]


def test_concurrent_appends_stay_gapless_and_chained(store: Store) -> None:
    threads, per_thread = 8, 25
    barrier = threading.Barrier(threads)

    def append_many(worker: int) -> list[int]:
        barrier.wait()  # start together, to contend for the head
        return [
            store.audit.append("load", actor=f"w{worker}", data={"i": i}).seq
            for i in range(per_thread)
        ]

    with ThreadPoolExecutor(threads) as pool:
        returned = [seq for seqs in pool.map(append_many, range(threads)) for seq in seqs]
    total = threads * per_thread
    assert sorted(returned) == list(range(1, total + 1))
    assert [e.seq for e in store.audit.list_all(limit=total + 1)] == list(range(1, total + 1))
    assert store.audit.verify() is None


def test_appends_from_separate_stores_share_one_chain(store: Store, store_url: str) -> None:
    # Two engines stand in for two gateway processes: nothing in memory is shared.
    with Store.open(store_url) as other:
        stores = [store, other] * 4
        barrier = threading.Barrier(len(stores))

        def append_many(index: int) -> None:
            barrier.wait()
            for i in range(10):
                stores[index].audit.append("load", data={"store": index % 2, "i": i})

        with ThreadPoolExecutor(len(stores)) as pool:
            list(pool.map(append_many, range(len(stores))))
        assert [e.seq for e in other.audit.list_all()] == list(range(1, 81))
        assert other.audit.verify() is None


def test_verify_audit_on_an_empty_log(store: Store) -> None:
    assert store.audit.verify() is None


Tamper = Callable[[sa.Connection], None]


def _execute(statement: str, **params: Any) -> Tamper:
    def tamper(conn: sa.Connection) -> None:
        conn.execute(sa.text(statement), params)

    return tamper


def _swap_data(a: int, b: int) -> Tamper:
    def tamper(conn: sa.Connection) -> None:
        query = sa.text("SELECT data FROM audit_events WHERE seq = :seq")
        data_a = conn.execute(query, {"seq": a}).scalar_one()
        data_b = conn.execute(query, {"seq": b}).scalar_one()
        update = sa.text("UPDATE audit_events SET data = :data WHERE seq = :seq")
        conn.execute(update, [{"data": data_b, "seq": a}, {"data": data_a, "seq": b}])

    return tamper


def _swap_seq(a: int, b: int) -> Tamper:
    def tamper(conn: sa.Connection) -> None:
        update = sa.text("UPDATE audit_events SET seq = :new WHERE seq = :old")
        conn.execute(update, {"old": a, "new": -1})
        conn.execute(update, {"old": b, "new": a})
        conn.execute(update, {"old": -1, "new": b})

    return tamper


@pytest.mark.parametrize(
    ("tamper", "broken"),
    [
        pytest.param(
            _execute("UPDATE audit_events SET data = :d WHERE seq = 3", d='{"i":99}'), 3, id="edit"
        ),
        pytest.param(_execute("DELETE FROM audit_events WHERE seq = 3"), 3, id="delete"),
        pytest.param(_execute("DELETE FROM audit_events WHERE seq = 1"), 1, id="delete-first"),
        pytest.param(_execute("DELETE FROM audit_events WHERE seq >= 5"), 5, id="truncate"),
        pytest.param(_swap_data(2, 5), 2, id="swap-data"),
        pytest.param(_swap_seq(2, 4), 2, id="reorder"),
        pytest.param(
            _execute("UPDATE audit_events SET actor = 'mallory' WHERE seq = 4"), 4, id="actor"
        ),
        pytest.param(
            _execute("UPDATE audit_events SET data = 'not json' WHERE seq = 6"), 6, id="garbage"
        ),
        pytest.param(
            _execute("UPDATE audit_head SET hash = :h WHERE id = 1", h=bytes(32)), 6, id="head"
        ),
    ],
)
def test_verify_audit_finds_the_first_tampered_event(
    store: Store, clock: Clock, tamper: Tamper, broken: int
) -> None:
    for i in range(6):
        store.audit.append("e", actor="alice", data={"i": i})
        clock.advance()
    assert store.audit.verify() is None
    with store.engine.begin() as conn:
        tamper(conn)
    assert store.audit.verify() == broken


def _reseal(seq: int, data: str) -> Tamper:
    """Edit event `seq` and give it the hash its new content earns (a careful forger)."""

    def tamper(conn: sa.Connection) -> None:
        row = conn.execute(sa.select(t.audit_events).where(t.audit_events.c.seq == seq)).one()
        digest = chain.event_hash(
            row.prev_hash,
            seq=seq,
            ts=row.ts,
            kind=row.kind,
            actor=row.actor,
            session_id=row.session_id,
            data=json.loads(data),
        )
        conn.execute(
            sa.update(t.audit_events)
            .where(t.audit_events.c.seq == seq)
            .values(data=data, hash=digest)
        )

    return tamper


def _append_behind_the_writer(conn: sa.Connection) -> None:
    """A well-chained event 7 written straight into the table (the head still says 6)."""
    last = conn.execute(sa.select(t.audit_events).where(t.audit_events.c.seq == 6)).one()
    digest = chain.event_hash(
        last.hash, seq=7, ts=last.ts, kind="e", actor="mallory", session_id=None, data={}
    )
    conn.execute(
        sa.insert(t.audit_events).values(
            seq=7,
            ts=last.ts,
            kind="e",
            actor="mallory",
            session_id=None,
            data="{}",
            prev_hash=last.hash,
            hash=digest,
        )
    )


@pytest.mark.parametrize(
    ("tamper", "expected", "detail"),
    [
        pytest.param(
            _execute("UPDATE audit_events SET data = :d WHERE seq = 3", d='{"i":99}'),
            {"first_bad_seq": 3, "problem": "edited", "checked": 3, "missing_to": None},
            "event 3 was edited (its hash does not match its content)",
            id="edited",
        ),
        pytest.param(
            _execute("DELETE FROM audit_events WHERE seq = 3"),
            {"first_bad_seq": 3, "problem": "missing", "checked": 3, "missing_to": 3},
            "event 3 is missing (deleted from the log)",
            id="deleted-in-the-middle",
        ),
        pytest.param(
            _execute("DELETE FROM audit_events WHERE seq IN (2, 3, 4)"),
            {"first_bad_seq": 2, "problem": "missing", "checked": 2, "missing_to": 4},
            "events 2 to 4 are missing (deleted from the log)",
            id="deleted-several",
        ),
        pytest.param(
            _execute("DELETE FROM audit_events WHERE seq = 1"),
            {"first_bad_seq": 1, "problem": "missing", "checked": 1, "missing_to": 1},
            "event 1 is missing",
            id="deleted-first",
        ),
        pytest.param(
            # Found through the writer's head row: the table alone looks like a shorter log.
            _execute("DELETE FROM audit_events WHERE seq >= 5"),
            {"first_bad_seq": 5, "problem": "missing", "checked": 4, "missing_to": 6},
            "events 5 to 6 are missing (deleted from the log)",
            id="deleted-at-the-end",
        ),
        pytest.param(
            _reseal(3, '{"i":99}'),
            {"first_bad_seq": 4, "problem": "relinked", "checked": 4, "missing_to": None},
            "event 4 does not follow event 3",
            id="replaced-with-a-new-hash",
        ),
        pytest.param(
            _append_behind_the_writer,
            {"first_bad_seq": 7, "problem": "unrecorded", "checked": 7, "missing_to": None},
            "event 7 and after were added outside the gateway's writer",
            id="appended-behind-the-writer",
        ),
        pytest.param(
            _execute("UPDATE audit_head SET hash = :h WHERE id = 1", h=bytes(32)),
            {"first_bad_seq": 6, "problem": "head", "checked": 6, "missing_to": None},
            "event 6, the last one, does not match the writer's record",
            id="head",
        ),
    ],
)
def test_check_audit_says_how_the_chain_broke_and_how_much_it_read(
    store: Store, clock: Clock, tamper: Tamper, expected: dict[str, Any], detail: str
) -> None:
    for i in range(6):
        store.audit.append("e", actor="alice", data={"i": i})
        clock.advance()
    intact = store.audit.check()
    assert intact.as_dict() == {
        "intact": True,
        "first_bad_seq": None,
        "checked": 6,
        "problem": None,
        "missing_to": None,
        "detail": "",
    }
    with store.engine.begin() as conn:
        tamper(conn)
    report = store.audit.check().as_dict()
    assert report["intact"] is False
    assert {k: report[k] for k in expected} == expected
    assert report["detail"].startswith(detail), report["detail"]
    assert store.audit.verify() == expected["first_bad_seq"]


def test_check_audit_of_an_empty_log_checked_nothing(store: Store) -> None:
    assert store.audit.check() == chain.ChainCheck(checked=0)


def test_tampering_with_the_timestamp_is_found(store: Store, clock: Clock) -> None:
    for _ in range(3):
        store.audit.append("e")
        clock.advance()
    with store.engine.begin() as conn:
        conn.execute(
            sa.update(t.audit_events).where(t.audit_events.c.seq == 2).values(ts=clock.advance())
        )
    assert store.audit.verify() == 2


# -- the hash chain, without a database ----------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(data=st.dictionaries(st.text(), json_values, max_size=5), seq=st.integers(1, 2**62))
def test_event_hash_survives_a_json_round_trip(data: dict[str, Any], seq: int) -> None:
    # The store hashes what it writes and verifies what it reads back; both must agree.
    read_back = json.loads(chain.canonical_json(data))
    assert chain.canonical_json(read_back) == chain.canonical_json(data)
    fields: dict[str, Any] = {"seq": seq, "ts": T0, "kind": "k", "actor": "a", "session_id": None}
    assert chain.event_hash(bytes(32), data=data, **fields) == chain.event_hash(
        bytes(32), data=read_back, **fields
    )


def test_event_hash_follows_the_documented_formula() -> None:
    body: dict[str, Any] = {
        "seq": 1,
        "ts": "2025-01-02T03:04:05.123456+00:00",
        "kind": "k",
        "actor": "ä",
        "session_id": None,
        "data": {"b": 1, "a": [1.5]},
    }
    expected = hashlib.sha256(
        bytes(32)
        + json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    ).digest()
    ts_elsewhere = T0.astimezone(PLUS_TWO)
    got = chain.event_hash(
        bytes(32), seq=1, ts=ts_elsewhere, kind="k", actor="ä", session_id=None, data=body["data"]
    )
    assert got == expected


def _events(n: int) -> list[AuditEvent]:
    events: list[AuditEvent] = []
    prev = chain.GENESIS_HASH
    for seq in range(1, n + 1):
        fields: dict[str, Any] = {
            "seq": seq,
            "ts": T0,
            "kind": "k",
            "actor": "-",
            "session_id": None,
            "data": {"seq": seq},
        }
        digest_ = chain.event_hash(prev, **fields)
        events.append(AuditEvent(**fields, prev_hash=prev, hash=digest_))
        prev = digest_
    return events


def test_first_broken_seq_without_a_database() -> None:
    events = _events(4)
    assert chain.first_broken_seq(events) is None
    assert chain.first_broken_seq(events, head=(4, events[-1].hash)) is None
    assert chain.first_broken_seq([]) is None
    assert chain.first_broken_seq([], head=(0, chain.GENESIS_HASH)) is None
    assert chain.first_broken_seq(events[:3], head=(4, events[-1].hash)) == 4
    assert chain.first_broken_seq(events, head=(3, events[2].hash)) == 4
    assert chain.first_broken_seq([events[0], events[2], events[3]]) == 2
    assert chain.first_broken_seq([dataclasses.replace(events[0], data={})]) == 1


# -- the PostgreSQL the tests run on -------------------------------------------------------


def test_postgres_fixture_demands_the_password(postgres_db: PostgresServer) -> None:
    with postgres_db.connect() as conn:
        assert conn.execute("SELECT current_database()").fetchone() == (postgres_db.dbname,)
    wrong = dataclasses.replace(postgres_db, password="wrong")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        wrong.connect().close()


def test_audit_writer_batch_appends_in_order_in_one_chain(store: Store) -> None:
    store.audit.append("before", actor="a")
    writer = store.audit.writer()
    try:
        events = writer.append(
            [
                ("pg.statement", "alice", "s1", {"text": "select 1"}),
                ("pg.result", "alice", "s1", {}),
            ]
        )
        assert writer.append([]) == []
    finally:
        writer.close()
    store.audit.append("after")
    assert [e.seq for e in events] == [2, 3]
    assert events[1].prev_hash == events[0].hash
    assert [e.kind for e in store.audit.list_all()] == [
        "before",
        "pg.statement",
        "pg.result",
        "after",
    ]
    assert store.audit.verify() is None


def test_list_audit_contains_matches_text_inside_the_data(store: Store) -> None:
    store.audit.append("pg.statement", data={"text": 'select "needle" from t'})
    store.audit.append("pg.statement", data={"text": "select 1"})
    hits = store.audit.list_all(kind="pg.statement", contains='"needle"')
    assert [e.data["text"] for e in hits] == ['select "needle" from t']
    assert store.audit.list_all(contains="100%_") == []


def test_audit_writer_hot_path_extends_the_same_chain(store: Store) -> None:
    store.audit.append("core.before", actor="a", data={"n": 1})
    writer = store.audit.writer()
    try:
        first = writer.append([("pg.statement", "alice", "s1", {"text": "select 1"})])
        second = writer.append(
            [("pg.result", "alice", "s1", {"rows": 1}), ("pg.statement", "bob", None, {})]
        )
    finally:
        writer.close()
    store.audit.append("core.after")
    assert [e.seq for e in first + second] == [2, 3, 4]
    listed = store.audit.list_all()
    assert [e.kind for e in listed] == [
        "core.before",
        "pg.statement",
        "pg.result",
        "pg.statement",
        "core.after",
    ]
    assert listed[1] == first[0]
    assert listed[1].ts == first[0].ts
    assert store.audit.verify() is None


@settings(deadline=None)
@given(
    st.dictionaries(st.text(max_size=8), st.one_of(st.none(), st.integers(), st.text(max_size=8))),
    st.text(max_size=10),
    st.one_of(st.none(), st.text(max_size=10)),
)
def test_payload_hash_equals_the_canonical_body_hash(
    data: dict[str, object], actor: str, session_id: str | None
) -> None:
    ts = dt.datetime(2026, 11, 26, 12, 0, tzinfo=dt.UTC)
    expected = chain.event_hash(
        chain.GENESIS_HASH, seq=7, ts=ts, kind="k", actor=actor, session_id=session_id, data=data
    )
    assert expected == chain.event_hash_of_payload(
        chain.GENESIS_HASH,
        seq=7,
        ts=ts,
        kind="k",
        actor=actor,
        session_id=session_id,
        payload=chain.canonical_json(data),
    )


@settings(deadline=None)
@given(
    st.dictionaries(st.text(max_size=8), st.one_of(st.none(), st.integers(), st.text(max_size=8))),
    st.text(max_size=10),
    st.one_of(st.none(), st.text(max_size=10)),
    st.text(max_size=10),
)
def test_the_hash_covers_the_canonical_json_of_the_whole_event(
    data: dict[str, object], actor: str, session_id: str | None, kind: str
) -> None:
    ts = dt.datetime(2026, 11, 26, 12, 0, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    whole = {
        "actor": actor,
        "data": data,
        "kind": kind,
        "seq": 7,
        "session_id": session_id,
        "ts": ts.astimezone(dt.UTC).isoformat(),
    }
    try:
        body = json.dumps(
            whole, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        ).encode()
    except UnicodeEncodeError:  # lone surrogates are not UTF-8: neither side can hash them
        return
    expected = hashlib.sha256(chain.GENESIS_HASH + body).digest()
    assert expected == chain.event_hash(
        chain.GENESIS_HASH, seq=7, ts=ts, kind=kind, actor=actor, session_id=session_id, data=data
    )


@pytest.mark.parametrize(("sync", "level"), [("full", 2), ("normal", 1)])
def test_bookkeeping_writes_leave_every_connection_at_the_configured_fsync(
    tmp_path: Path, sync: Literal["full", "normal"], level: int
) -> None:
    # Session rows skip their own fsync (the next audit commit syncs the WAL they are in);
    # the pooled connection must go back to the configured level for everything else.
    with Store.open(f"sqlite:///{tmp_path / 'w.db'}", sqlite_sync=sync) as store:
        store.sessions.create(make_session("s1"))
        store.sessions.end("s1", status="closed", error=None, bytes_up=1, bytes_down=2)
        with store.engine.connect() as conn:
            driver = conn.connection.driver_connection
            assert driver is not None
            assert driver.execute("PRAGMA synchronous").fetchone()[0] == level
        ended = store.sessions.get("s1")
        assert ended is not None and ended.status == "closed"


def test_ids_never_start_with_a_dash_the_cli_would_read_as_an_option() -> None:
    ids = [new_id() for _ in range(2000)]  # one in 64 token_urlsafe strings starts with "-"
    assert not [i for i in ids if i.startswith("-")]
    assert {len(i) for i in ids} == {12}
    assert len(set(ids)) == len(ids)


# ---- one transaction for a change and its audit event -----------------------------------


def _refuse_audit_appends(store: Store) -> None:
    """Every audit append now fails in the database, as on a full disk."""
    with store.engine.begin() as db:
        if store.dialect == "sqlite":
            db.exec_driver_sql(
                "CREATE TRIGGER refuse_audit BEFORE INSERT ON audit_events "
                "BEGIN SELECT RAISE(ABORT, 'disk is full'); END"
            )
        else:
            db.exec_driver_sql(
                "CREATE FUNCTION refuse_audit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                "RAISE EXCEPTION 'disk is full' USING ERRCODE = 'disk_full'; END $$"
            )
            db.exec_driver_sql(
                "CREATE TRIGGER refuse_audit BEFORE INSERT ON audit_events "
                "FOR EACH ROW EXECUTE FUNCTION refuse_audit()"
            )


def test_a_change_whose_audit_event_fails_is_not_made(store: Store) -> None:
    store.audit.append("before", actor="ann")
    _refuse_audit_appends(store)
    conn = ConnectionRecord(name="db9", type="postgres", pool="p", host="h", port=5432)
    # SQLite's trigger fails as a constraint, PostgreSQL's as its disk_full error.
    refused = (sa.exc.IntegrityError, StoreUnavailable)
    with pytest.raises(refused, match="disk is full"), store.transaction():
        store.connections.upsert(conn)
        store.agents.create("a9", "p", bytes(32))
        store.audit.append("connection.created", actor="ann", data={"connection": "db9"})
    assert store.connections.get("db9") is None
    assert store.agents.get("a9") is None
    assert [e.kind for e in store.audit.list_all()] == ["before"]


def test_a_change_and_its_event_commit_together(store: Store) -> None:
    conn = ConnectionRecord(name="db9", type="postgres", pool="p", host="h", port=5432)
    with store.transaction():
        store.connections.upsert(conn)
        store.agents.create("a9", "p", bytes(32))
        with pytest.raises(AlreadyExists):  # a failed call undoes only its own part
            store.agents.create("a9", "p", bytes(32))
        store.audit.append("connection.created", actor="ann", data={"connection": "db9"})
    assert store.connections.get("db9") is not None
    assert store.agents.get("a9") is not None
    assert [e.kind for e in store.audit.list_all()] == ["connection.created"]
    assert store.audit.verify() is None
