"""Policy versions and budget usage in the store, on SQLite and a real PostgreSQL."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from gateway.policy.budgets import Usage
from gateway.policy.rules import PolicyConfig, Subject
from gateway.policystore import (
    BudgetLedger,
    PolicyDocumentError,
    PolicySource,
    SessionPolicy,
    canonical,
)
from gateway.store import Store
from tests.fixtures.postgres import PostgresServer

DENY_DELETE = {
    "rules": [{"name": "no-delete", "effect": "deny", "match": {"kinds": ["write"]}}],
}
BUDGET = {"budgets": [{"name": "daily", "rows_per_day": 5}]}
DAY = dt.date(2026, 3, 1)


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'wardgate.db'}"
    else:
        db: PostgresServer = request.getfixturevalue("postgres_db")
        url = db.url()
    with Store.open(url) as opened:
        yield opened


def test_a_version_is_created_only_when_the_document_changes(store: Store) -> None:
    assert store.policy.latest_version() == 0 and store.policy.get_version() is None
    text, sha = canonical(PolicyConfig.model_validate(DENY_DELETE))
    first, created = store.policy.add_version(text, sha, applied_by="alice", comment="one")
    assert created and first.version == 1 and first.applied_by == "alice"
    again, created = store.policy.add_version(text, sha, applied_by="bob")
    assert not created and again.version == 1
    text2, sha2 = canonical(PolicyConfig.model_validate(BUDGET))
    second, created = store.policy.add_version(text2, sha2, applied_by="bob")
    assert created and second.version == 2
    seeded, created = store.policy.add_version(text, sha, applied_by="config", only_if_empty=True)
    assert not created and seeded.version == 2
    assert store.policy.latest_version() == 2
    assert [v.version for v in store.policy.list_versions()] == [1, 2]
    one = store.policy.get_version(1)
    assert one is not None and json.loads(one.document) == json.loads(text)
    assert one.comment == "one" and one.applied_at.tzinfo is not None


def test_canonical_ignores_formatting_and_defaults() -> None:
    a = PolicyConfig.model_validate({"guarded_connections": ["x"], "rules": []})
    b = PolicyConfig.model_validate({"guarded_connections": ["x"]})
    assert canonical(a) == canonical(b)
    assert canonical(PolicyConfig())[0] == "{}"


def test_budget_usage_increments_are_atomic_across_threads(store: Store) -> None:
    def add(_: int) -> None:
        store.policy.add_budget_usage("alice", "pg", {(DAY, "daily"): (3, 100)})

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(add, range(40)))
    assert store.policy.budget_usage(DAY, user="alice") == [("alice", "pg", "daily", 120, 4000)]
    totals = store.policy.add_budget_usage(
        "alice", "pg", {(DAY, "daily"): (1, 1), (DAY, "b2"): (2, 2)}
    )
    assert totals == {(DAY, "daily"): (121, 4001), (DAY, "b2"): (2, 2)}
    assert store.policy.budget_usage(DAY + dt.timedelta(days=1)) == []
    assert store.policy.budget_usage(DAY, user="bob") == []


async def test_the_config_seeds_version_one_and_then_the_store_wins(store: Store) -> None:
    source = PolicySource(store, PolicyConfig.model_validate(DENY_DELETE))
    source.seed()
    assert source.version == 1 and source.policy.config.rules[0].name == "no-delete"
    record = store.policy.get_version(1)
    assert record is not None and record.applied_by == "config"
    applied = await source.apply(BUDGET, applied_by="alice", comment="budgets")
    assert applied.created and applied.record.version == 2 and source.version == 2
    # A restart with the old config does not undo what was applied since.
    restarted = PolicySource(store, PolicyConfig.model_validate(DENY_DELETE))
    restarted.seed()
    assert restarted.version == 2 and not restarted.policy.config.rules
    # An empty config on an empty store seeds nothing.


async def test_an_empty_config_seeds_nothing(store: Store) -> None:
    source = PolicySource(store, PolicyConfig())
    source.seed()
    assert source.version == 0 and store.policy.latest_version() == 0


async def test_a_replica_picks_up_a_version_it_did_not_write(store: Store) -> None:
    writer, replica = PolicySource(store), PolicySource(store)
    writer.seed()
    replica.seed()
    await writer.apply(DENY_DELETE, applied_by="alice")
    assert replica.version == 0
    assert await replica.refresh() == 1
    assert replica.policy.config.rules[0].name == "no-delete"


async def test_invalid_documents_change_nothing(store: Store) -> None:
    source = PolicySource(store)
    await source.apply(DENY_DELETE, applied_by="alice")
    bad = [
        {"rules": [{"name": "x", "effect": "maybe"}]},
        {"budgets": [{"name": "b"}]},
        {"unknown": 1},
        ["not", "a", "mapping"],
    ]
    for document in bad:
        with pytest.raises(PolicyDocumentError, match="policy"):
            await source.apply(document, applied_by="alice")
    assert store.policy.latest_version() == 1 and source.version == 1


async def test_rollback_applies_an_old_document_as_a_new_version(store: Store) -> None:
    source = PolicySource(store)
    await source.apply(DENY_DELETE, applied_by="alice")
    await source.apply(BUDGET, applied_by="alice")
    back = await source.rollback(1, applied_by="bob")
    assert back is not None and back.created and back.record.version == 3
    assert back.record.comment == "rollback to version 1"
    assert source.policy.config.rules[0].name == "no-delete"
    same = await source.rollback(3, applied_by="bob")
    assert same is not None and not same.created
    assert await source.rollback(99, applied_by="bob") is None


async def test_an_open_session_switches_at_its_next_statement(store: Store) -> None:
    source = PolicySource(store)
    session = SessionPolicy(source, BudgetLedger(store), Subject("alice"), "pg")
    assert session.current() is None and not session.metered
    await source.apply({**DENY_DELETE, **BUDGET}, applied_by="admin")
    guard = session.current()
    assert guard is not None and session.version == 1 and session.metered
    assert guard.check("delete from t").effect == "deny"
    assert session.count(3, 10) is None
    assert await session.exhausted() is None  # flushes the 3 rows, reads the totals
    today = dt.datetime.now(dt.UTC).date()
    assert store.policy.budget_usage(today, user="alice") == [("alice", "pg", "daily", 3, 10)]
    store.policy.add_budget_usage("alice", "pg", {(today, "daily"): (2, 0)})  # another replica
    await session.flush()
    exceeded = await session.exhausted()
    assert exceeded is not None and exceeded.usage == Usage(5, 10)


async def test_usage_of_a_budget_a_new_version_drops_is_still_stored(store: Store) -> None:
    source = PolicySource(store)
    await source.apply(BUDGET, applied_by="admin")
    session = SessionPolicy(source, BudgetLedger(store), Subject("alice"), "pg")
    session.count(2, 20)
    await source.apply(DENY_DELETE, applied_by="admin")  # no budgets any more
    session.current()
    assert not session.metered and session.pending
    await session.flush()
    today = dt.datetime.now(dt.UTC).date()
    assert store.policy.budget_usage(today, user="alice") == [("alice", "pg", "daily", 2, 20)]


async def test_an_ended_session_owes_its_usage_to_the_ledger_until_it_writes(
    store: Store,
) -> None:
    source = PolicySource(store)
    await source.apply(BUDGET, applied_by="admin")
    ledger = BudgetLedger(store)
    today = dt.datetime.now(dt.UTC).date()
    ended = SessionPolicy(source, ledger, Subject("alice"), "pg")
    ended.count(3, 30)
    ended.release()
    # Not in the store yet, but this gateway's next session of alice sees it at once.
    assert store.policy.budget_usage(today, user="alice") == []
    assert await ledger.totals("alice", "pg", today) == {"daily": Usage(3, 30)}
    added = await ledger.add("alice", "pg", {(today, "daily"): Usage(1, 10)})
    assert added == {(today, "daily"): Usage(4, 40)}
    await ledger.aclose()
    assert store.policy.budget_usage(today, user="alice") == [("alice", "pg", "daily", 4, 40)]
    assert await ledger.totals("alice", "pg", today) == {"daily": Usage(4, 40)}


async def test_deferred_usage_stays_owed_when_the_store_write_fails(store: Store) -> None:
    ledger = BudgetLedger(store)
    today = dt.datetime.now(dt.UTC).date()
    ledger.defer("bob", "pg", {(today, "daily"): Usage(2, 20)})
    store.close()  # every write fails now
    await ledger.flush()
    assert ledger._unwritten("bob", "pg") == {(today, "daily"): Usage(2, 20)}


class _ReadsTold(BudgetLedger):
    """The real ledger, telling when it has read totals (the session loads them right after,
    before it awaits anything else) and when it has added usage to the store."""

    def __init__(self, store: Store) -> None:
        super().__init__(store)
        self.read = asyncio.Event()
        self.added = asyncio.Event()

    async def add(
        self, user: str, connection: str, pending: dict[tuple[dt.date, str], Usage]
    ) -> dict[tuple[dt.date, str], Usage]:
        added = await super().add(user, connection, pending)
        self.added.set()
        return added

    async def totals(self, user: str, connection: str, day: dt.date) -> dict[str, Usage]:
        totals = await super().totals(user, connection, day)
        self.read.set()
        return totals


async def test_a_metered_session_loads_its_usage_before_its_first_statement(store: Store) -> None:
    source = PolicySource(store)
    await source.apply(BUDGET, applied_by="admin")
    today = dt.datetime.now(dt.UTC).date()
    store.policy.add_budget_usage("alice", "pg", {(today, "daily"): (5, 0)})
    ledger = _ReadsTold(store)
    session = SessionPolicy(source, ledger, Subject("alice"), "pg")
    assert session.meter is not None and session.meter.exhausted() is None  # not read yet
    async with asyncio.TaskGroup() as tg:
        flusher = tg.create_task(session.run_flusher(asyncio.Event()))
        async with asyncio.timeout(10):  # no statement comes: the flusher alone reads
            await ledger.read.wait()
        flusher.cancel()
    exceeded = session.meter.exhausted()
    assert exceeded is not None and exceeded.usage == Usage(5, 0)


async def test_usage_counted_after_an_idle_spell_is_written_within_the_interval(
    store: Store,
) -> None:
    source = PolicySource(store)
    await source.apply(BUDGET, applied_by="admin")
    ledger = _ReadsTold(store)
    session = SessionPolicy(source, ledger, Subject("alice"), "pg")
    async with asyncio.TaskGroup() as tg:
        flusher = tg.create_task(session.run_flusher(asyncio.Event()))
        async with asyncio.timeout(10):
            await ledger.read.wait()  # loaded; idle now, with nothing to write
            assert not ledger.added.is_set()
            session.count(3, 30)
            await ledger.added.wait()  # the flusher woke for it: no statement came
        flusher.cancel()
    today = dt.datetime.now(dt.UTC).date()
    assert store.policy.budget_usage(today, user="alice") == [("alice", "pg", "daily", 3, 30)]


def _refuse_budget_writes(store: Store, user: str) -> None:
    """Make the store refuse budget usage of `user` (only), as a failing disk would."""
    with store.engine.begin() as db:
        if store.dialect == "sqlite":
            db.exec_driver_sql(
                "CREATE TRIGGER refuse_usage BEFORE INSERT ON budget_usage "
                f"WHEN NEW.\"user\" = '{user}' BEGIN SELECT RAISE(ABORT, 'disk is full'); END"
            )
        else:
            db.exec_driver_sql(
                "CREATE FUNCTION refuse_usage() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                f"IF NEW.\"user\" = '{user}' THEN RAISE EXCEPTION 'disk is full' "
                "USING ERRCODE = 'disk_full'; END IF; RETURN NEW; END $$"
            )
            db.exec_driver_sql(
                "CREATE TRIGGER refuse_usage BEFORE INSERT ON budget_usage "
                "FOR EACH ROW EXECUTE FUNCTION refuse_usage()"
            )


def _accept_budget_writes(store: Store) -> None:
    with store.engine.begin() as db:
        if store.dialect == "sqlite":
            db.exec_driver_sql("DROP TRIGGER refuse_usage")
        else:
            db.exec_driver_sql("DROP TRIGGER refuse_usage ON budget_usage")
            db.exec_driver_sql("DROP FUNCTION refuse_usage()")


async def test_usage_written_before_a_failed_write_is_not_counted_again(store: Store) -> None:
    """A flush that stores one identity's usage and fails on the next owes only the part
    that failed: what was committed is not written a second time at the next flush."""
    ledger = BudgetLedger(store)
    today = dt.datetime.now(dt.UTC).date()
    ledger.defer("alice", "pg", {(today, "daily"): Usage(2, 20)})
    ledger.defer("bob", "pg", {(today, "daily"): Usage(3, 30)})
    _refuse_budget_writes(store, "bob")
    await ledger.flush()
    assert store.policy.budget_usage(today, user="alice") == [("alice", "pg", "daily", 2, 20)]
    assert store.policy.budget_usage(today, user="bob") == []
    assert await ledger.totals("alice", "pg", today) == {"daily": Usage(2, 20)}
    assert await ledger.totals("bob", "pg", today) == {"daily": Usage(3, 30)}
    _accept_budget_writes(store)
    await ledger.flush()
    assert store.policy.budget_usage(today) == [
        ("alice", "pg", "daily", 2, 20),
        ("bob", "pg", "daily", 3, 30),
    ]
